"""`mtl prepare cityscapes` against cityscapesscripts' `createTrainIdLabelImgs` on the same images.

Draws N synthetic images in the Cityscapes layout (default 50 at 1024x2048, like Cityscapes: polygon
JSONs plus the official labelIds / instanceIds PNGs), then, in one process and alternating over
--repeats rounds, times

  * ours, 1 worker and the default worker count (all cores, what `mtl prepare cityscapes` uses):
    `prepare_cityscapes` — trainIds, boxes and RLE masks for every instance, DT bins, COCO JSON;
  * ours from PNGs only, 1 worker: the same tree without the polygon JSONs, so that the labelIds /
    instanceIds PNGs are decoded instead of the polygons drawn (the JSON is used wherever it exists);
  * official: `createTrainIdLabelImgs.main()` — trainIds only, rasterised from the polygon JSONs,
    single-process as shipped, on a copy of gtFine/ with CITYSCAPES_DATASET pointing at it (it writes
    next to its input);
  * official on a pool (only when the default is more than one worker, for the like-for-like figure):
    its per-file `json2labelImg(..., "trainIds")` mapped over that many processes.

Prints, per configuration, the median images/s, ms per image of wall time and of CPU time (user + sys
of this process and its finished worker processes), and the cost ratios ours / official. The machine
may be shared: read the ratios (measured side by side) rather than the absolute numbers, and the CPU
times, which a busy machine inflates less than wall times. Where other sessions keep the cores busy,
Linux shares CPU time per session (autogroup scheduling), so extra workers cannot show their speed-up
in wall time there: with the cores to itself, N workers take about CPU ms/image / N each.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_prepare.py
    .venv/bin/python benchmarks/bench_prepare.py --images 20 --size 512 1024 --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from mtlcli.data.cityscapes import prepare_cityscapes
from mtlcli.data.prepared import default_workers
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
            list(
                pool.map(
                    json2labelImg,
                    [str(f) for f in files],
                    [str(f).replace("_polygons.json", "_labelTrainIds.png") for f in files],
                    ["trainIds"] * len(files),
                    chunksize=max(1, len(files) // (4 * workers)),
                )
            )
    return len(files)


def cpu_seconds() -> float:
    """User + system time of this process and of its children that have exited (pool workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of fn()."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, cpu_seconds() - c0


def reusable(src: Path, images: int, size: tuple[int, int]) -> bool:
    """Whether a --workdir already holds the synthetic city this run asks for (generating it takes
    longer than the runs themselves)."""
    found = sorted(src.glob("leftImg8bit/train/*/*_leftImg8bit.png"))
    if len(found) != images or len(list(src.glob("gtFine/train/*/*_polygons.json"))) != images:
        return False
    with Image.open(found[0]) as img:
        return img.size == (size[1], size[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"))
    parser.add_argument(
        "--workers", type=int, default=None, help="the multi-worker count [default: all cores, as mtl uses]"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the generated data here (default: a temporary folder)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    many = args.workers or default_workers()

    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        work = args.workdir or Path(tmp)
        src = work / "src"
        if reusable(src, args.images, tuple(args.size)):
            print(f"reusing the {args.images} synthetic images in {src}")
        else:
            t0 = time.perf_counter()
            generate_synthetic(
                src, train=args.images, val=0, size=tuple(args.size), seed=0, force=True, workers=many, quiet=True
            )
            print(
                f"generated {args.images} synthetic images of {args.size[0]}x{args.size[1]} in "
                f"{time.perf_counter() - t0:.1f} s"
            )
        official_root = work / "official"
        shutil.rmtree(official_root, ignore_errors=True)
        shutil.copytree(src / "gtFine", official_root / "gtFine")  # the official script writes next to its input

        png_src = work / "src_pngs"  # the same ground truth without the polygon JSONs
        shutil.rmtree(png_src, ignore_errors=True)
        shutil.copytree(src / "gtFine", png_src / "gtFine", ignore=shutil.ignore_patterns("*_polygons.json"))
        (png_src / "leftImg8bit").symlink_to(src / "leftImg8bit")

        def clean() -> None:  # between runs, untimed: every run writes all its files afresh
            shutil.rmtree(work / "prepared", ignore_errors=True)
            for f in official_root.glob("gtFine/*/*/*_labelTrainIds.png"):
                f.unlink()

        def ours(workers: int, root: Path = src) -> Callable[[], None]:
            def run() -> None:
                summary = prepare_cityscapes(root, work / "prepared", workers=workers, quiet=True)
                assert summary["splits"]["train"]["images"] == args.images, summary["skipped"][:3]

            return run

        def official(workers: int) -> Callable[[], None]:
            def run() -> None:
                assert official_train_ids(official_root, workers) == args.images

            return run

        configs = {"ours_1": ours(1), "official_1": official(1), "ours_1_pngs": ours(1, png_src)}
        if many > 1:
            configs.update({f"ours_{many}": ours(many), f"official_{many}_pool": official(many)})
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
        for r in range(args.repeats):
            for name, run in configs.items():  # alternating, so that load changes hit every configuration alike
                clean()
                times[name].append(timed(run))
            print(f"run {r + 1}: " + ", ".join(f"{name} {times[name][-1][0]:.2f} s" for name in configs))

    result: dict[str, object] = {
        "images": args.images,
        "size": args.size,
        "repeats": args.repeats,
        "default_workers": many,
    }
    for name, samples in times.items():
        wall, cpu = statistics.median(t for t, _ in samples), statistics.median(c for _, c in samples)
        result[name] = {
            "images_per_s": args.images / wall,
            "ms_per_image": 1000 * wall / args.images,
            "cpu_ms_per_image": 1000 * cpu / args.images,
        }
    labels = {
        "ours_1": "prepare_cityscapes, 1 worker",
        "official_1": "createTrainIdLabelImgs (as shipped)",
        "ours_1_pngs": "prepare_cityscapes, 1 worker, PNGs only",
        f"ours_{many}": f"prepare_cityscapes, {many} workers (default)",
        f"official_{many}_pool": f"json2labelImg on {many} processes",
    }
    print(f"\n{args.images} images of {args.size[0]}x{args.size[1]}, medians of {args.repeats} alternating runs")
    print(f"{'':44s} {'images/s':>9s} {'ms/image':>9s} {'CPU ms/image':>13s}")
    for name in times:
        row = result[name]
        print(
            f"{labels[name]:44s} {row['images_per_s']:9.2f} {row['ms_per_image']:9.1f} {row['cpu_ms_per_image']:13.1f}"
        )
    ratios = {}
    for name in times:
        if name.startswith("ours"):  # ours_1_pngs / official_1 too: the cost when a tree has no polygon JSONs
            ratios[f"{name}/official_1"] = result[name]["ms_per_image"] / result["official_1"]["ms_per_image"]
    if many > 1:
        ratios[f"ours_{many}/official_{many}_pool"] = (
            result[f"ours_{many}"]["ms_per_image"] / result[f"official_{many}_pool"]["ms_per_image"]
        )
    ratios["cpu ours_1/official_1"] = result["ours_1"]["cpu_ms_per_image"] / result["official_1"]["cpu_ms_per_image"]
    result["cost_ratios"] = ratios
    print(
        "cost per image, ours (trainIds + boxes/masks + DT + JSON) / official (trainIds only), below 1 = ours faster:"
    )
    for name, ratio in ratios.items():
        print(f"  {name:32s} {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
