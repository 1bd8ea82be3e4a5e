"""mIoU over prediction / ground-truth pairs: mtl against cityscapesscripts' evalPixelLevelSemanticLabeling.

Builds N pairs at 1024x2048 (default 200) in the real layouts: Cityscapes gtFine labelIds/instanceIds for
the official script, the same ground truth prepared by `prepare_cityscapes` for mtl, and one folder of
predicted labelIds PNGs named `<city>_<seq>_<frame>_leftImg8bit.png` that both read. To keep the set-up
short, `--unique` synthetic scenes (`generate_synthetic`) are drawn and copied under N names; predictions
are the ground truth shifted by a few pixels with wrong-class blobs.

Then, in one process and alternating over `--repeats` rounds, it times

  * official, mIoU only: glob + getPrediction + evaluateImgLists with evalInstLevelScore = False;
  * mtl, mIoU only: `semantic_pairs` + `SegmentationMetric` without instances, with 1 and 2 decoding threads;
  * official, mIoU + iIoU: the script's default (evalInstLevelScore = True; numpy >= 2.4 removed the
    np.in1d it calls, so np.isin stands in for it);
  * mtl, mIoU + iIoU: `evaluate_predictions(..., ["miou"], cityscapes_ids=True)` (what `mtl eval` runs);
  * the same four with the PNGs decoded beforehand ("in memory"): the official module's `Image.open`
    answers from a cache of decoded images, ours gets the arrays — the counting alone, since both
    sides otherwise spend most of their time in zlib decoding the same PNGs.

and checks that every per-class IoU / iIoU and both means agree to 1e-9. Prints medians, per-image costs
and ratios, and whether the official script used its Cython addon. The machine may be shared: read the
ratios (measured side by side) rather than the absolute numbers.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_miou.py
    .venv/bin/python benchmarks/bench_miou.py --pairs 50 --repeats 3 --size 512 1024
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mtlcli.data.cityscapes import prepare_cityscapes
from mtlcli.data.synthetic import generate_synthetic
from mtlcli.metrics.predictions import GroundTruth, PredictionReader, evaluate_predictions, read_png, semantic_pairs
from mtlcli.metrics.segmentation import SegmentationMetric


def build(root: Path, pairs: int, unique: int, size: tuple[int, int]) -> tuple[Path, Path, Path, dict[str, str]]:
    """(cityscapes root, prepared root, prediction folder, copy -> source file) with `pairs` images made
    of `unique` scenes."""
    src = generate_synthetic(root / "scenes", train=1, val=unique, size=size, seed=0, quiet=True)
    scenes = root / "scenes_prepared"
    prepare_cityscapes(src, scenes, workers=2, quiet=True)
    coco = json.loads((scenes / "val" / "instances.json").read_text())
    cs, prep, pred = root / "cityscapes", root / "prepared", root / "pred"
    (prep / "val" / "semantic").mkdir(parents=True)
    pred.mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    sources = []
    origin: dict[str, str] = {}
    for img in coco["images"]:
        city = img["city"] if "city" in img else img["file_name"].split("/")[2]
        gt_stem = img["stem"].replace("_leftImg8bit", "")
        gt_dir = src / "gtFine" / "val" / city
        label = np.array(Image.open(gt_dir / f"{gt_stem}_gtFine_labelIds.png"))
        guess = np.roll(label, (3, -4), axis=(0, 1))  # boundaries a few pixels off
        for _ in range(12):  # wrong-class blobs
            y, x = rng.integers(0, size[0] - 60), rng.integers(0, size[1] - 90)
            guess[y : y + rng.integers(10, 60), x : x + rng.integers(10, 90)] = rng.choice(
                [7, 8, 11, 21, 23, 24, 26, 0]
            )
        pred_file = root / f"pred_{img['id']}.png"
        Image.fromarray(guess).save(pred_file)
        sources.append((img, gt_dir / gt_stem, pred_file))
    for i in range(pairs):
        img, gt_base, pred_file = sources[i % len(sources)]
        city = "benchcity"
        base = f"{city}_{i:06d}_000019"
        (cs / "gtFine" / "val" / city).mkdir(parents=True, exist_ok=True)
        stem = f"{base}_leftImg8bit"
        copies = [
            (f"{gt_base}_gtFine_{kind}.png", cs / "gtFine" / "val" / city / f"{base}_gtFine_{kind}.png")
            for kind in ("labelIds", "instanceIds")
        ]
        copies += [
            (scenes / "val" / "semantic" / f"{img['stem']}.png", prep / "val" / "semantic" / f"{stem}.png"),
            (pred_file, pred / f"{stem}.png"),
        ]
        for a, b in copies:
            shutil.copyfile(a, b)
            origin[str(b)] = str(a)
        images.append({**img, "id": i + 1, "stem": stem, "file_name": f"leftImg8bit/val/{city}/{stem}.png"})
        for a in coco["annotations"]:
            if a["image_id"] == img["id"]:
                anns.append({**a, "id": len(anns) + 1, "image_id": i + 1})
    meta = json.loads((scenes / "dataset.json").read_text())
    (prep / "dataset.json").write_text(json.dumps({**meta, "splits": ["val"], "source": str(cs)}))
    (prep / "val" / "instances.json").write_text(json.dumps({**coco, "images": images, "annotations": anns}))
    return cs, prep, pred, origin


def official(cs: Path, pred: Path, inst_level: bool) -> dict:
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as ev

    args = copy.copy(ev.args)
    args.evalInstLevelScore, args.JSONOutput, args.quiet = inst_level, False, True
    args.predictionPath, args.predictionWalk = str(pred), None
    gts = glob.glob(str(cs / "gtFine" / "val" / "*" / "*_gtFine_labelIds.png"))
    preds = [ev.getPrediction(args, gt) for gt in gts]
    return ev.evaluateImgLists(preds, gts, args)


class CachedImages:
    """Stands in for PIL.Image inside the official module: `open` returns the already decoded image of
    the file's source scene, so that only the script's own counting is timed."""

    def __init__(self, origin: dict[str, str]) -> None:
        self.origin, self.cache = origin, {}

    def open(self, path: str):
        src = self.origin[str(path)]
        if src not in self.cache:
            img = Image.open(src)
            img.load()
            self.cache[src] = img
        return self.cache[src]


def official_in_memory(cs: Path, pred: Path, inst_level: bool, cached: CachedImages) -> dict:
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as ev

    real = ev.Image
    ev.Image = cached
    try:
        return official(cs, pred, inst_level)
    finally:
        ev.Image = real


def ours_in_memory(
    prep: Path, pred: Path, origin: dict[str, str], inst_level: bool, arrays: dict[str, np.ndarray]
) -> dict:
    """What `evaluate_predictions` does per pair, on arrays decoded beforehand (labelIds -> classes
    mapping, joint histogram, fold, and iIoU from the RLE runs)."""
    from mtlcli.metrics.predictions import det_to_seg_index, instance_hits
    from mtlcli.metrics.segmentation import cityscapes_instance_sizes, joint_histogram

    gt = GroundTruth.load(prep, "val")
    reader = PredictionReader(gt.meta, cityscapes_ids=True)
    sizes = cityscapes_instance_sizes(gt.meta.seg_classes, gt.meta.det_classes) if inst_level else None
    metric = SegmentationMetric(gt.meta.seg_classes, gt.meta.ignore_index, instance_sizes=sizes)
    class_index = det_to_seg_index(gt.meta)

    def array(path: Path) -> np.ndarray:
        src = origin[str(path)]
        if src not in arrays:
            arrays[src] = read_png(Path(src))
        return arrays[src]

    for img in gt.images():
        target = array(prep / "val" / "semantic" / f"{img['stem']}.png")
        raw = array(pred / f"{img['stem']}.png")
        if not sizes:  # mIoU only: the labelId -> class map applies to the histogram's keys, not the pixels
            metric.update(raw, target, histogram=joint_histogram(raw, target, pred_lut=reader.lut))
            continue
        p = np.take(reader.lut, raw)
        metric.update(p, target, histogram=joint_histogram(p, target))
        metric.add_instances(*instance_hits(gt, img["id"], class_index, p))
    return metric.compute()["details"]


def ours_miou_only(prep: Path, pred: Path, threads: int) -> dict:
    gt = GroundTruth.load(prep, "val")
    metric = SegmentationMetric(gt.meta.seg_classes, gt.meta.ignore_index)
    for _, p, t, hist in semantic_pairs(gt, pred, PredictionReader(gt.meta, cityscapes_ids=True), workers=threads):
        metric.update(p, t, histogram=hist)
    return metric.compute()["details"]


def agree(ours: list, names: list[str], ref: dict) -> float:
    """Largest |difference| between our per-class list and the official dict (NaN == None)."""
    worst = 0.0
    for name, v in zip(names, ours, strict=True):
        r = ref[name]
        if math.isnan(r) or v is None:
            if not (math.isnan(r) and v is None):
                return math.inf
            continue
        worst = max(worst, abs(v - r))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--unique", type=int, default=10, help="distinct synthetic scenes copied to make the pairs")
    ap.add_argument("--size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"))
    ap.add_argument("--repeats", type=int, default=3)
    opts = ap.parse_args()

    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as ev

    np.in1d = lambda a, b, invert=False: np.isin(np.asarray(a).ravel(), b, invert=invert)  # removed in numpy 2.4
    path = "Cython addToConfusionMatrix" if ev.CSUPPORT else "numpy (np.unique per image; Cython addon not built)"
    print(f"official path: {path}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cs, prep, pred, origin = build(Path(tmp), opts.pairs, opts.unique, tuple(opts.size))
        cached, arrays = CachedImages(origin), {}
        print(
            f"built {opts.pairs} pairs at {opts.size[0]}x{opts.size[1]} from {opts.unique} scenes in "
            f"{time.perf_counter() - t0:.0f} s"
        )
        names = GroundTruth.load(prep, "val").meta.seg_classes
        read_png(next(pred.glob("*.png")))  # imports (torch, torchvision) outside the timings
        runs = {
            "official mIoU": lambda: official(cs, pred, False),
            "mtl mIoU (1 thread)": lambda: ours_miou_only(prep, pred, 1),
            "mtl mIoU (2 threads)": lambda: ours_miou_only(prep, pred, 2),
            "official mIoU+iIoU": lambda: official(cs, pred, True),
            "mtl mIoU+iIoU": lambda: evaluate_predictions(
                prep, "val", pred, ["miou"], cityscapes_ids=True, progress=False
            ),
            "in memory: official mIoU": lambda: official_in_memory(cs, pred, False, cached),
            "in memory: mtl mIoU": lambda: ours_in_memory(prep, pred, origin, False, arrays),
            "in memory: official +iIoU": lambda: official_in_memory(cs, pred, True, cached),
            "in memory: mtl +iIoU": lambda: ours_in_memory(prep, pred, origin, True, arrays),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        results: dict[str, dict] = {}
        for _ in range(opts.repeats):
            for key, fn in runs.items():
                t = time.perf_counter()
                results[key] = fn()
                times[key].append(time.perf_counter() - t)

    off, full = results["official mIoU+iIoU"], results["mtl mIoU+iIoU"]["details"]["miou"]
    worst = max(
        agree(results[k]["iou"], names, results["official mIoU"]["classScores"])
        for k in ("mtl mIoU (1 thread)", "mtl mIoU (2 threads)")
    )
    mem_off, mem = results["in memory: official +iIoU"], results["in memory: mtl +iIoU"]
    worst = max(
        worst,
        agree(mem["iou"], names, mem_off["classScores"]),
        agree(mem["iiou"], names, mem_off["classInstScores"]),
        agree(results["in memory: mtl mIoU"]["iou"], names, results["in memory: official mIoU"]["classScores"]),
    )
    worst = max(
        worst,
        agree(full["iou"], names, off["classScores"]),
        agree(full["iiou"], names, off["classInstScores"]),
        abs(full["miou"] - off["averageScoreClasses"]),
        abs(full["miiou"] - off["averageScoreInstClasses"]),
    )
    print(
        f"mIoU {full['miou']:.6f} (official {off['averageScoreClasses']:.6f}), iIoU {full['miiou']:.6f} "
        f"(official {off['averageScoreInstClasses']:.6f}); largest per-class difference {worst:.2e}"
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{'':28s}{'median s':>10s}{'ms/pair':>10s}   runs (s)")
    for k, v in med.items():
        print(f"{k:28s}{v:10.2f}{1000 * v / opts.pairs:10.1f}   {', '.join(f'{x:.2f}' for x in times[k])}")
    print(
        f"\nspeed-up mIoU only:  {med['official mIoU'] / med['mtl mIoU (1 thread)']:.1f}x (1 thread), "
        f"{med['official mIoU'] / med['mtl mIoU (2 threads)']:.1f}x (2 threads)"
    )
    print(f"speed-up mIoU+iIoU:  {med['official mIoU+iIoU'] / med['mtl mIoU+iIoU']:.1f}x")
    print(
        f"in memory (PNG decoding left out): mIoU {med['in memory: official mIoU'] / med['in memory: mtl mIoU']:.1f}x, "
        f"mIoU+iIoU {med['in memory: official +iIoU'] / med['in memory: mtl +iIoU']:.1f}x"
    )
    if worst > 1e-9:
        raise SystemExit(f"numbers differ from the official script by {worst:.2e}")


if __name__ == "__main__":
    main()
