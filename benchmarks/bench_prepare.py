"""`prepare_cityscapes` against cityscapesscripts' `createTrainIdLabelImgs` on the same images.

Draws N synthetic images in the Cityscapes layout (default 50 at 1024x2048, like Cityscapes), then, in
one process and alternating (ours, official, ours, official, ...), times

  * ours: `prepare_cityscapes` — trainIds, boxes and RLE masks for every instance, DT bins, COCO JSON;
  * official: `createTrainIdLabelImgs` — trainIds only, rasterised from the polygon JSONs, run on a
    copy of gtFine/ with CITYSCAPES_DATASET pointing at it (it writes next to its input).

Both use the same number of processes (--workers; the official script is serial, so for more than one
worker its per-file function `json2labelImg(..., "trainIds")` is mapped over a process pool exactly as
its main loop would). Prints the median images/s of each and the ratio of per-image costs. The machine
may be shared: medians over --repeats runs, and read the ratio rather than the absolute numbers.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_prepare.py
    .venv/bin/python benchmarks/bench_prepare.py --images 20 --size 512 1024 --workers 2 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from mtlcli.data.cityscapes import prepare_cityscapes
from mtlcli.data.synthetic import generate_synthetic


def official_train_ids(root: Path, workers: int) -> int:
    """Run cityscapesscripts' trainId conversion over root/gtFine; returns the number of files."""
    from cityscapesscripts.preparation import createTrainIdLabelImgs
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    files = sorted(root.glob("gtFine/*/*/*_gt*_polygons.json"))
    if workers == 1:
        os.environ["CITYSCAPES_DATASET"] = str(root)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a progress percentage per file
            createTrainIdLabelImgs.main()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(json2labelImg, [str(f) for f in files], [str(f).replace("_polygons.json", "_labelTrainIds.png") for f in files],
                          ["trainIds"] * len(files), chunksize=max(1, len(files) // (4 * workers))))
    return len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated data here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        work = args.workdir or Path(tmp)
        src = work / "src"
        t0 = time.perf_counter()
        generate_synthetic(src, train=args.images, val=0, size=tuple(args.size), seed=0, force=True,
                           workers=args.workers, quiet=True)
        print(f"generated {args.images} synthetic images of {args.size[0]}x{args.size[1]} in {time.perf_counter() - t0:.1f} s")
        official_root = work / "official"
        shutil.rmtree(official_root, ignore_errors=True)
        shutil.copytree(src / "gtFine", official_root / "gtFine")  # the official script writes next to its input

        ours, official = [], []
        for r in range(args.repeats):
            out = work / f"prepared{r}"
            t0 = time.perf_counter()
            summary = prepare_cityscapes(src, out, workers=args.workers, force=True, quiet=True)
            ours.append(time.perf_counter() - t0)
            assert summary["splits"]["train"]["images"] == args.images, summary["skipped"][:3]
            shutil.rmtree(out)

            t0 = time.perf_counter()
            n = official_train_ids(official_root, args.workers)
            official.append(time.perf_counter() - t0)
            assert n == args.images
            for f in official_root.glob("gtFine/*/*/*_labelTrainIds.png"):
                f.unlink()
            print(f"run {r + 1}: ours {ours[-1]:.2f} s, official {official[-1]:.2f} s")

    t_ours, t_official = statistics.median(ours), statistics.median(official)
    result = {
        "images": args.images, "size": args.size, "workers": args.workers, "repeats": args.repeats,
        "ours_images_per_s": args.images / t_ours, "official_images_per_s": args.images / t_official,
        "ours_ms_per_image": 1000 * t_ours / args.images, "official_ms_per_image": 1000 * t_official / args.images,
        "cost_ratio_ours_over_official": t_ours / t_official,
    }
    print(f"prepare_cityscapes (trainIds + boxes/masks + DT + JSON): {result['ours_images_per_s']:.2f} images/s "
          f"({result['ours_ms_per_image']:.0f} ms/image)")
    print(f"createTrainIdLabelImgs (trainIds only):                 {result['official_images_per_s']:.2f} images/s "
          f"({result['official_ms_per_image']:.0f} ms/image)")
    print(f"cost per image, ours / official: {result['cost_ratio_ours_over_official']:.2f} "
          f"(median of {args.repeats} alternating runs, {args.workers} worker(s))")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
