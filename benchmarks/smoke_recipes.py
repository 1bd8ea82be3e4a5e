"""Every shipped recipe at its real size: a few training iterations and a 2-image evaluation, offline.

For each recipe in recipes/ (or those named), on synthetic data in that recipe's dataset format:

- one synthetic city (`generate_synthetic`, Cityscapes layout, default 1024x2048, 8 train + 2 val
  images) prepared with `prepare_cityscapes` (recipes on `cityscapes` and `synthetic`);
- a COCO-format copy (`train2017/`, `val2017/` JPEGs, `annotations/instances_*2017.json` with the 80
  COCO categories; the city's classes mapped to COCO's: rider -> person) prepared with `prepare_coco`
  (`coco`), and the same files as custom JSONs (`custom`);
- a VOC-format copy (VOCdevkit/VOC2007 + VOC2012 + SBD: JPEGs, devkit XMLs with 1-based inclusive
  boxes, palette PNGs and SBD `.mat` labels painted from the instance masks; rider -> person, truck ->
  car, motorcycle -> motorbike) prepared with `prepare_voc` (`voc`): VOC07 trainval and test, VOC12
  Main trainval, seg train / val and an SBD train list, so every paper split exists and holds 2+ images;
- a MOT15-format copy (one sequence `train/SYN-01/img1/*.jpg` + `gt/gt.txt` of the person boxes)
  prepared with `prepare_mot15` (`mot15`; the last 20% of the frames are val).

Each recipe then trains with the real `mtl train` code (`mtlcli.engine.train.train`) for `--iterations`
iterations (one per stage for staged recipes) at batch 1, with its own input size, augmentation and
schedule, `pretrained_backbone` off (offline), main-process loading, and evaluates its `[eval]` metrics at
its `[eval]` resolution at the end, on the 2-image evaluation split. One subprocess per recipe (so peak
RSS is the recipe's own, and a crash is that recipe's). The table: recipe, seconds per training
iteration at batch 1 (median over the iterations after the first), peak RSS, the metrics present after
the evaluation, pass/fail (training finished with finite losses and every `[eval]` metric is present
and finite).

    .venv/bin/python benchmarks/smoke_recipes.py                           # every recipe, ~1 h on 2 cores
    .venv/bin/python benchmarks/smoke_recipes.py --recipes imtl-cityscapes ssd300-mot15
    .venv/bin/python benchmarks/smoke_recipes.py --markdown docs/benchmarks-smoke.md --log smoke.jsonl

`smoke_recipe` (one recipe, in-process) and `make_datasets` are what tests/benchmarks/test_smoke_recipes.py
runs on one recipe per family at a reduced size.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: this tree's mtlcli first
    sys.path.insert(0, str(ROOT))

# the city's det classes -> COCO category names / VOC class names
TO_COCO = {"person": "person", "rider": "person", "car": "car", "truck": "truck", "bus": "bus", "train": "train",
           "motorcycle": "motorcycle", "bicycle": "bicycle"}  # fmt: skip
TO_VOC = {"person": "person", "rider": "person", "car": "car", "truck": "car", "bus": "bus", "train": "train",
          "motorcycle": "motorbike", "bicycle": "bicycle"}  # fmt: skip


# ------------------------------------------------------------------------------------------ datasets
def _city_items(prepared: Path) -> list[dict[str, Any]]:
    """Every image of the prepared city, train then val: {"path", "split", "height", "width",
    "objects": [(class name, [x, y, w, h] pixels, rle, iscrowd)]}."""
    meta = json.loads((prepared / "dataset.json").read_text())
    source = Path(meta["source"])
    items = []
    for split in ("train", "val"):
        coco = json.loads((prepared / split / "instances.json").read_text())
        names = {c["id"]: c["name"] for c in coco["categories"]}
        by_image: dict[int, list] = {}
        for a in coco["annotations"]:
            by_image.setdefault(a["image_id"], []).append(
                (names[a["category_id"]], a["bbox"], a["segmentation"], a["iscrowd"])
            )
        for img in coco["images"]:
            items.append({
                "path": source / img["file_name"], "split": split, "height": img["height"], "width": img["width"],
                "objects": by_image.get(img["id"], []),
            })  # fmt: skip
    return items


def _jpeg(src: Path, dst: Path) -> None:
    from PIL import Image

    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.open(src).convert("RGB").save(dst, quality=90)


def _decode(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode(
        {"size": rle["size"], "counts": rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"]}
    )


def write_coco(items: list[dict], out: Path) -> Path:
    """COCO 2017 layout of the city: train2017/ (the city's train images), val2017/ (its val images),
    annotations/instances_{train,val}2017.json with the 80 COCO categories (torchvision's list of ids)."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    names = MaskRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]  # index = COCO category id
    categories = [
        {"id": i, "name": n, "supercategory": ""} for i, n in enumerate(names) if n not in ("__background__", "N/A")
    ]
    cat_id = {c["name"]: c["id"] for c in categories}
    for split in ("train", "val"):
        images, anns = [], []
        for k, item in enumerate(i for i in items if i["split"] == split):
            file_name = f"{k + 1:012d}.jpg"
            _jpeg(item["path"], out / f"{split}2017" / file_name)
            images.append({"id": k + 1, "file_name": file_name, "height": item["height"], "width": item["width"]})
            for name, bbox, rle, crowd in item["objects"]:
                anns.append({
                    "id": len(anns) + 1, "image_id": k + 1, "category_id": cat_id[TO_COCO[name]], "bbox": bbox,
                    "area": float(bbox[2] * bbox[3]), "iscrowd": crowd, "segmentation": rle,
                })  # fmt: skip
        path = out / "annotations" / f"instances_{split}2017.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return out


def _voc_label(item: dict, h: int, w: int) -> np.ndarray:
    """VOC class map (0 background, 1..20) painted from the non-crowd instance masks."""
    from mtlcli.data.voc import VOC_CLASSES

    label = np.zeros((h, w), np.uint8)
    for name, _, rle, crowd in item["objects"]:
        if not crowd:
            label[_decode(rle).astype(bool)] = VOC_CLASSES.index(TO_VOC[name]) + 1
    return label


def write_voc(items: list[dict], out: Path) -> dict[str, Path]:
    """VOCdevkit/VOC2007 (trainval: train 0-1, test: val 0-1), VOCdevkit/VOC2012 (Main trainval: train
    2-7; seg train: train 2-3, seg val: train 6-7) and benchmark_RELEASE/dataset (SBD train: train 4-5)."""
    import scipy.io
    import scipy.sparse
    from PIL import Image

    from mtlcli.data.voc import voc_colormap

    train = [i for i in items if i["split"] == "train"]
    val = [i for i in items if i["split"] == "val"]
    if len(train) < 8 or len(val) < 2:
        raise ValueError("the VOC copy needs a city of at least 8 train and 2 val images")
    v07, v12 = out / "VOCdevkit" / "VOC2007", out / "VOCdevkit" / "VOC2012"
    sbd = out / "benchmark_RELEASE" / "dataset"

    def image(root: Path, stem: str, item: dict) -> None:
        _jpeg(item["path"], root / "JPEGImages" / f"{stem}.jpg")
        objs = "".join(
            f"<object><name>{TO_VOC[n]}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{c}</difficult><bndbox><xmin>{round(b[0]) + 1}</xmin><ymin>{round(b[1]) + 1}</ymin>"
            f"<xmax>{round(b[0] + b[2])}</xmax><ymax>{round(b[1] + b[3])}</ymax></bndbox></object>"
            for n, b, _, c in item["objects"]
            if b[2] >= 1 and b[3] >= 1
        )
        xml = root / "Annotations" / f"{stem}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_text(
            f"<annotation><folder>{root.name}</folder><filename>{stem}.jpg</filename><size><width>{item['width']}"
            f"</width><height>{item['height']}</height><depth>3</depth></size><segmented>0</segmented>{objs}</annotation>"
        )

    def palette_png(stem: str, item: dict) -> None:
        path = v12 / "SegmentationClass" / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        png = Image.fromarray(_voc_label(item, item["height"], item["width"]), mode="P")
        png.putpalette([c for rgb in voc_colormap(256) for c in rgb])
        png.save(path)

    def lists(path: Path, stems: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{s}\n" for s in stems))

    s07 = {f"{k + 1:06d}": it for k, it in enumerate(train[:2] + val[:2])}
    for stem, item in s07.items():
        image(v07, stem, item)
    lists(v07 / "ImageSets" / "Main" / "trainval.txt", list(s07)[:2])
    lists(v07 / "ImageSets" / "Main" / "test.txt", list(s07)[2:])
    s12 = {f"2008_{k + 1:06d}": it for k, it in enumerate(train[2:8])}
    for stem, item in s12.items():
        image(v12, stem, item)
    stems = list(s12)
    lists(v12 / "ImageSets" / "Main" / "trainval.txt", stems)
    lists(v12 / "ImageSets" / "Segmentation" / "train.txt", stems[:2])
    lists(v12 / "ImageSets" / "Segmentation" / "val.txt", stems[4:6])
    for stem in stems[:2] + stems[4:6]:
        palette_png(stem, s12[stem])
    for stem in stems[2:4]:
        item = s12[stem]
        _jpeg(item["path"], sbd / "img" / f"{stem}.jpg")
        label = _voc_label(item, item["height"], item["width"])
        boundaries = np.empty((20, 1), dtype=object)
        for i in range(20):
            boundaries[i, 0] = scipy.sparse.csc_matrix(label.shape, dtype=np.float64)
        (sbd / "cls").mkdir(parents=True, exist_ok=True)
        present = np.unique(label[label > 0]).astype(np.uint8)
        scipy.io.savemat(
            sbd / "cls" / f"{stem}.mat",
            {"GTcls": {"Boundaries": boundaries, "Segmentation": label, "CategoriesPresent": present}},
        )
    lists(sbd / "train.txt", stems[2:4])
    lists(sbd / "val.txt", [])
    return {"voc2012": v12, "voc2007": v07, "sbd": sbd}


def write_mot15(items: list[dict], out: Path) -> Path:
    """2DMOT2015 layout: train/SYN-01/img1/000001.jpg .. and gt/gt.txt rows "frame,id,x,y,w,h,1,-1,-1,-1"
    (1-based x, y) of the person and rider boxes. Frames with people last, so the val part (the last 20%)
    has boxes."""
    people = [it for it in items if any(n in ("person", "rider") and not c for n, _, _, c in it["objects"])]
    order = [it for it in items if it not in people] + people
    seq = out / "train" / "SYN-01"
    rows = []
    for f, item in enumerate(order, start=1):
        _jpeg(item["path"], seq / "img1" / f"{f:06d}.jpg")
        for k, (name, b, _, crowd) in enumerate(item["objects"]):
            if name in ("person", "rider") and not crowd:
                rows.append(f"{f},{k + 1},{b[0] + 1},{b[1] + 1},{b[2]},{b[3]},1,-1,-1,-1")
    (seq / "gt").mkdir(parents=True, exist_ok=True)
    (seq / "gt" / "gt.txt").write_text("\n".join(rows) + "\n")
    return out


def make_datasets(folder: Path, size: tuple[int, int] = (1024, 2048), train: int = 8, val: int = 2) -> dict[str, Path]:
    """The synthetic city in every format a recipe may name, prepared: {dataset name: prepared root}."""
    from mtlcli.data.cityscapes import prepare_cityscapes
    from mtlcli.data.coco import prepare_coco
    from mtlcli.data.mot15 import prepare_mot15
    from mtlcli.data.synthetic import generate_synthetic
    from mtlcli.data.voc import prepare_voc

    folder = Path(folder)
    city = generate_synthetic(folder / "src" / "city", train=train, val=val, size=size, seed=0, quiet=True, workers=1)
    prepare_cityscapes(city, folder / "cityscapes", workers=1, quiet=True)
    items = _city_items(folder / "cityscapes")
    coco = write_coco(items, folder / "src" / "coco")
    prepare_coco(coco, folder / "coco", workers=1, quiet=True)
    prepare_coco(
        None, folder / "custom", workers=1, quiet=True,
        train_json=coco / "annotations" / "instances_train2017.json", train_images=coco / "train2017",
        val_json=coco / "annotations" / "instances_val2017.json", val_images=coco / "val2017",
    )  # fmt: skip
    voc = write_voc(items, folder / "src" / "voc")
    quiet_call(prepare_voc, folder / "voc", workers=1, **voc)
    quiet_call(prepare_mot15, write_mot15(items, folder / "src" / "mot15"), folder / "mot15", workers=1)
    roots = {name: folder / name for name in ("cityscapes", "coco", "custom", "voc", "mot15")}
    roots["synthetic"] = roots["cityscapes"]
    return roots


def quiet_call(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Run a prepare function whose summary goes to stdout, without that summary."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


# -------------------------------------------------------------------------------------------- recipes
def smoke_config(name: str, data_root: Path, *, iterations: int = 3, reduced: tuple[int, int] | None = None) -> dict:
    """The recipe `name` set up for a smoke run: its model, input size, augmentation and schedule as
    shipped, but `iterations` iterations (1 per stage for staged recipes) at batch 1, no workers, no
    RAM cache, no ImageNet download, logging every iteration and evaluating once at the end on
    `data_root`'s evaluation split. `reduced` (H, W) shrinks every size key the recipe sets (the model's
    input_size or min_size / max_size, the data pipeline's resize and crop, the eval resolution) to
    that size, for the suite's quick run; SSD-style models keep their fixed 300 / 512."""
    from mtlcli.recipes import load_recipe

    overrides = [
        f"data.root={data_root}", "train.batch_size=1", "train.accumulate=1", "train.workers=0", "data.cache=none",
        "train.log_interval=1", "eval.batch_size=1", "eval.interval=0",
    ]  # fmt: skip
    recipe = load_recipe(name, overrides)
    train = recipe["train"]
    for stage in train["stages"]:  # a staged recipe: one iteration per stage
        stage["iterations"] = 1
    train["iterations"] = len(train["stages"]) or iterations
    train["checkpoint_interval"] = train["iterations"]
    if "pretrained_backbone" in recipe["model"]:
        recipe["model"]["pretrained_backbone"] = False
    if reduced is not None:
        h, w = reduced
        model, data = recipe["model"], recipe["data"]
        if isinstance(model.get("input_size"), list):
            model["input_size"] = [h, w]
        if "min_size" in model:
            model.update(min_size=min(h, w), max_size=max(h, w))
            model.pop("test_min_size", None), model.pop("test_max_size", None)
        if data["augmentation"] == "cityscapes":  # the SSD pipeline resizes to the model's fixed size
            if data["min_size"]:
                data.update(min_size=min(h, w), max_size=max(h, w))
            if any(data["crop_size"]):
                data["crop_size"] = [h, w]
        if any(recipe["eval"]["resolution"]):
            recipe["eval"]["resolution"] = [h, w]
    return recipe


def smoke_recipe(name: str, roots: dict[str, Path], run_dir: Path, **config: Any) -> dict[str, Any]:
    """Train and evaluate one recipe (see `smoke_config`) in this process; returns the table row
    {"recipe", "dataset", "s_per_iter", "peak_rss_mb", "metrics" (name -> value), "expected" (the
    recipe's [eval] metrics), "ok", "error"}. Never raises for a failing recipe: the row says why."""
    import torch

    from mtlcli.engine.train import train
    from mtlcli.recipes import load_recipe

    row: dict[str, Any] = {"recipe": name, "dataset": "", "s_per_iter": math.nan, "metrics": {}, "expected": []}
    t0 = time.perf_counter()
    try:
        dataset = load_recipe(name)["data"]["dataset"]
        row["dataset"] = dataset
        if dataset not in roots:
            raise ValueError(f"no synthetic copy in the {dataset!r} format")
        recipe = smoke_config(name, roots[dataset], **config)
        row["expected"] = list(recipe["eval"]["metrics"])
        torch.manual_seed(0)
        result = train(recipe, run_dir, progress=False)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        steps = [1.0 / r["images_per_s"] for r in records if r.get("type") == "train"]
        row["s_per_iter"] = statistics.median(steps[1:] or steps)
        row["losses_finite"] = all(math.isfinite(v) for v in result["losses"].values())
        row["metrics"] = dict(result["metrics"])
        missing = [m for m in row["expected"] if m not in row["metrics"] or not math.isfinite(row["metrics"][m])]
        row["ok"] = row["losses_finite"] and not missing and result["iteration"] == recipe["train"]["iterations"]
        row["error"] = f"missing metrics {missing}" if missing else ("" if row["ok"] else "non-finite loss")
    except BaseException as exc:  # a smoke test reports every failure in its row
        if isinstance(exc, KeyboardInterrupt):
            raise
        row["ok"] = False
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        row["traceback"] = traceback.format_exc()[-3000:]
    row["wall_s"] = time.perf_counter() - t0
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return row


def run_isolated(name: str, roots: dict[str, Path], work: Path, iterations: int, timeout: float) -> dict[str, Any]:
    """`smoke_recipe` in a fresh Python process (its own peak RSS, its own crash)."""
    out = work / f"{name}.json"
    cmd = [sys.executable, __file__, "--one", name, "--roots", json.dumps({k: str(v) for k, v in roots.items()}),
           "--work", str(work), "--iterations", str(iterations), "--result", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"recipe": name, "ok": False, "error": f"timed out after {timeout:.0f} s", "metrics": {}, "expected": []}
    if out.is_file():
        return json.loads(out.read_text())
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
    return {"recipe": name, "ok": False, "error": f"process died: {tail[0][:300]}", "metrics": {}, "expected": []}


def logged_rows(log: str | None) -> dict[str, dict[str, Any]]:
    """The rows of `log` (JSON lines) by recipe, the last row of a recipe winning."""
    if not log or not Path(log).is_file():
        return {}
    rows = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    return {r["recipe"]: r for r in rows}


def passed_rows(log: str | None) -> dict[str, dict[str, Any]]:
    """The rows of `log` that passed, by recipe."""
    return {name: r for name, r in logged_rows(log).items() if r.get("ok")}


def claim(path: Path) -> bool:
    """Take recipe `path.name` for this process (several smoke processes may share one --work, one core
    each): False when a live process holds it. A claim of a process that has died is taken over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(path.read_text() or 0)
            if pid <= 0:  # written by a process killed before it named itself (kill(0) would be the group)
                raise ValueError(pid)
            if pid == os.getpid():
                return True
            os.kill(pid, 0)
            return False  # alive
        except PermissionError:  # alive, another user's process
            return False
        except (ValueError, ProcessLookupError):
            path.write_text(str(os.getpid()))
            return True
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def markdown(rows: list[dict[str, Any]], header: str = "") -> str:
    lines = [header] if header else []
    lines += ["| recipe | dataset | s/iteration (batch 1) | peak RSS (MiB) | metrics present | result |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        present = ", ".join(f"{k} {100 * v:.2f}" for k, v in r.get("metrics", {}).items()) or "—"
        s = (
            f"{r['s_per_iter']:.2f}"
            if isinstance(r.get("s_per_iter"), float) and math.isfinite(r["s_per_iter"])
            else "—"
        )
        rss = f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "—"
        verdict = "pass" if r.get("ok") else f"FAIL: {r.get('error', '')}".replace("|", "/")
        lines.append(f"| `{r['recipe']}` | {r.get('dataset', '')} | {s} | {rss} | {present} | {verdict} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="*", help="recipe names (default: every file in recipes/)")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"))
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per recipe")
    parser.add_argument("--work", help="folder for the data and runs (default: a temporary one, removed)")
    parser.add_argument("--markdown", help="write the table there (markdown)")
    parser.add_argument("--log", help="append each row as JSON to this file as it finishes")
    resume = (
        "skip the recipes that already passed in --log (re-read before each recipe) or that another smoke "
        "process on the same --work holds; the table is every row of --log"
    )
    parser.add_argument("--resume", action="store_true", help=resume)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--roots", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one:  # the child of run_isolated
        roots = {k: Path(v) for k, v in json.loads(args.roots).items()}
        run_dir = Path(args.work) / "runs" / args.one
        shutil.rmtree(run_dir, ignore_errors=True)
        row = smoke_recipe(args.one, roots, run_dir, iterations=args.iterations)
        shutil.rmtree(run_dir, ignore_errors=True)  # full-size checkpoints: hundreds of MB each
        Path(args.result).write_text(json.dumps(row))
        return 0

    names = args.recipes or sorted(p.stem for p in (ROOT / "recipes").glob("*.toml"))
    temp = None if args.work else tempfile.TemporaryDirectory(prefix="mtl-smoke-")
    work = Path(args.work or temp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    roots_file = work / "roots.json"
    if roots_file.is_file():
        roots = {k: Path(v) for k, v in json.loads(roots_file.read_text()).items()}
    else:
        roots = make_datasets(work / "data", tuple(args.size))
        roots_file.write_text(json.dumps({k: str(v) for k, v in roots.items()}))
    print(f"datasets ready in {time.perf_counter() - t0:.0f} s under {work}", flush=True)
    rows = []
    for name in names:
        done = passed_rows(args.log) if args.resume else {}
        if name in done:
            rows.append(done[name])
            continue
        if args.resume and not claim(work / "claims" / name):
            continue  # another smoke process on the same --work runs it; its row goes to the shared --log
        row = run_isolated(name, roots, work, args.iterations, args.timeout)
        rows.append(row)
        verdict = "pass" if row.get("ok") else f"FAIL {row.get('error', '')}"
        print(f"{name}: {row.get('s_per_iter', math.nan):.2f} s/it, {row.get('peak_rss_mb', 0):.0f} MiB, "
              f"{sorted(row.get('metrics', {}))} {verdict}", flush=True)  # fmt: skip
        if args.log:
            with open(args.log, "a") as f:
                f.write(json.dumps(row) + "\n")
    if args.resume and args.log:  # the table of every row in the shared log, in the order asked
        logged = logged_rows(args.log)
        rows = [logged[n] for n in names if n in logged]
    table = markdown(rows)
    print(table)
    if args.markdown:
        from mtlcli.safety import atomic_write_text

        atomic_write_text(Path(args.markdown), table)
    if temp is not None:
        temp.cleanup()
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
