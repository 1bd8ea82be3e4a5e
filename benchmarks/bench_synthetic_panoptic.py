"""What the synthetic city's panoptic ground truth costs: the extra seconds of `generate_synthetic(panoptic=True)`.

In one process, alternating over --rounds: draw the city without panoptic files (`generate_synthetic(...,
panoptic=False, force=True)`, --workers processes), then write its panoptic files
(`mtlcli.data.cityscapes_panoptic.write_cityscapes_panoptic`: cityscapesscripts' convert2panoptic over
every split, fsync and renames) — exactly the step `panoptic=True` adds. Printed: medians of both in
seconds and the panoptic step as a fraction of the drawing.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_synthetic_panoptic.py --rounds 3
    .venv/bin/python benchmarks/bench_synthetic_panoptic.py --train 300 --val 60 --size 256 512 --workers 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--val", type=int, default=60)
    ap.add_argument("--size", type=int, nargs=2, default=[256, 512], metavar=("H", "W"))
    ap.add_argument("--workers", type=int, default=1, help="processes drawing the city (the panoptic step is one)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from mtlcli.data.cityscapes_panoptic import write_cityscapes_panoptic
    from mtlcli.data.synthetic import generate_synthetic

    draw, panoptic = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "city"
        for r in range(args.rounds):
            t0 = time.perf_counter()
            generate_synthetic(
                root, train=args.train, val=args.val, size=tuple(args.size), workers=args.workers,
                force=True, quiet=True, panoptic=False,
            )  # fmt: skip
            t1 = time.perf_counter()
            written = write_cityscapes_panoptic(root, ["train", "val"])
            t2 = time.perf_counter()
            draw.append(t1 - t0)
            panoptic.append(t2 - t1)
            print(f"round {r + 1}: draw {t1 - t0:.2f} s, panoptic {t2 - t1:.2f} s ({', '.join(written)})", flush=True)
    d, p = statistics.median(draw), statistics.median(panoptic)
    n = args.train + args.val
    print(
        f"{args.train}+{args.val} images of {args.size[0]}x{args.size[1]}, draw with {args.workers} worker(s): "
        f"median draw {d:.2f} s, median panoptic step {p:.2f} s ({1000 * p / n:.1f} ms/image, "
        f"{100 * p / d:.0f}% of the drawing)"
    )


if __name__ == "__main__":
    main()
