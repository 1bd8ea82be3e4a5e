"""Panoptic quality over COCO panoptic pairs: mtl against cityscapesscripts' evalPanopticSemanticLabeling.

Builds N ground-truth / prediction pairs at Cityscapes size (default 500 at 1024x2048) in the format
`createPanopticImgs` writes (tests/metrics/panoptic_fixtures.py: Cityscapes label ids as categories,
things, stuff, crowd and void); `--unique` distinct scenes are drawn and copied under N names to keep
the set-up short. Then, alternating over `--repeats` rounds in one process, it times

  * official, one core: `pq_compute_single_core` over every pair + `average_pq`;
  * mtl, one thread: `pq_compute(..., workers=1)`;
  * official, its default: `evaluatePanoptic` (a multiprocessing pool of cpu_count processes);
  * mtl, cpu_count decoding threads: `pq_compute(..., workers=cpu_count)`;

and, first, the two one-core runs interleaved pair by pair (`interleaved`: the fairest figure on a shared
machine), and checks that PQ / SQ / RQ overall, for things, for stuff and per class agree (prints the largest
absolute difference). Prints medians and ratios; the machine may be shared, so read the ratios.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_pq.py
    .venv/bin/python benchmarks/bench_pq.py --pairs 100 --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as official

from mtlcli.metrics.panoptic import pq_compute
from tests.metrics.panoptic_fixtures import write_pairs


def official_single(gt_json: Path, gt_folder: Path, pred_json: Path, pred_folder: Path) -> dict:
    gt, pred = json.loads(gt_json.read_text()), json.loads(pred_json.read_text())
    cats = {c["id"]: c for c in gt["categories"]}
    by_id = {a["image_id"]: a for a in pred["annotations"]}
    pairs = [(a, by_id[a["image_id"]]) for a in gt["annotations"]]
    stat = official.pq_compute_single_core(0, pairs, str(gt_folder), str(pred_folder), cats)
    return official.average_pq(stat, cats)


def interleaved(gt_json: Path, gt_folder: Path, pred_json: Path, pred_folder: Path) -> tuple[float, float, dict]:
    """Per pair, alternating which goes first: the official per-image work (`pq_compute_single_core` on
    that one pair: decode both PNGs, count, match) and ours (`read_panoptic_png` x 2 + `add_image`).
    Returns (official seconds, mtl seconds, our averaged result): a load that changes during the run
    falls on both alike."""
    from mtlcli.metrics.panoptic import PQStats, read_panoptic_png

    gt, pred = json.loads(gt_json.read_text()), json.loads(pred_json.read_text())
    cats = {c["id"]: c for c in gt["categories"]}
    by_id = {a["image_id"]: a for a in pred["annotations"]}
    stats = PQStats(gt["categories"])
    read_panoptic_png(gt_folder / gt["annotations"][0]["file_name"])  # torchvision's codecs imported once
    t_off = t_mtl = 0.0
    for k, a in enumerate(gt["annotations"]):
        p = by_id[a["image_id"]]

        def ours(a=a, p=p):
            g, q = read_panoptic_png(gt_folder / a["file_name"]), read_panoptic_png(pred_folder / p["file_name"])
            stats.add_image(g, a["segments_info"], q, p["segments_info"])

        def theirs(a=a, p=p):
            official.pq_compute_single_core(0, [(a, p)], str(gt_folder), str(pred_folder), cats)

        for fn in (ours, theirs) if k % 2 else (theirs, ours):
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
            if fn is ours:
                t_mtl += dt
            else:
                t_off += dt
    return t_off, t_mtl, stats.average()


def max_diff(a: dict, b: dict) -> float:
    d = [abs(a[g][m] - b[g][m]) for g in ("All", "Things", "Stuff") for m in ("pq", "sq", "rq")]
    d += [abs(a["per_class"][c][m] - b["per_class"][c][m]) for c in b["per_class"] for m in ("pq", "sq", "rq")]
    assert all(a[g]["n"] == b[g]["n"] for g in ("All", "Things", "Stuff"))
    return max(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=500)
    ap.add_argument("--unique", type=int, default=20)
    ap.add_argument("--size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = write_pairs(Path(tmp), args.pairs, size=tuple(args.size), seed=0, unique=args.unique)
        print(
            f"{args.pairs} pairs at {args.size[0]}x{args.size[1]} ({args.unique} distinct scenes) built in "
            f"{time.perf_counter() - t0:.0f} s; {cpus} CPUs"
        )
        runs = {
            "official, one core": lambda: official_single(*paths),
            "mtl, one thread": lambda: pq_compute(*paths, workers=1),
            f"official, evaluatePanoptic ({cpus} processes)": lambda: official.evaluatePanoptic(
                *(str(p) for p in paths), str(Path(tmp) / "official.json")
            ),
            f"mtl, {cpus} threads": lambda: pq_compute(*paths, workers=cpus),
        }
        with contextlib.redirect_stdout(io.StringIO()):
            t_off, t_mtl, inter = interleaved(*paths)
        print(
            f"interleaved per pair, one core: official {1000 * t_off / args.pairs:.1f} ms/pair, "
            f"mtl {1000 * t_mtl / args.pairs:.1f} ms/pair, speed-up {t_off / t_mtl:.2f}x",
            flush=True,
        )
        times: dict[str, list[float]] = {k: [] for k in runs}
        results: dict[str, dict] = {}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                t = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    results[name] = fn()
                times[name].append(time.perf_counter() - t)
                print(f"  {name}: {times[name][-1]:.1f} s", flush=True)
    names = list(runs)
    diff = max(max_diff(r, results[names[0]]) for r in [inter] + [results[n] for n in names[1:]])
    print(f"\nPQ {results[names[1]]['All']['pq']:.6f}; largest |mtl - official| over every PQ/SQ/RQ: {diff:.3g}")
    print(f"{'':45s} {'median s':>9s} {'ms/pair':>8s}")
    for n in names:
        m = statistics.median(times[n])
        print(f"{n:45s} {m:9.2f} {1000 * m / args.pairs:8.1f}")
    med = {n: statistics.median(times[n]) for n in names}
    print(f"\nspeed-up, one core:  {med[names[0]] / med[names[1]]:.2f}x")
    print(f"speed-up, defaults:  {med[names[2]] / med[names[3]]:.2f}x")


if __name__ == "__main__":
    main()
