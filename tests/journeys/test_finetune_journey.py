"""Journey: fine-tune as users of the anchors do (issue 25, item 2).

A short quickstart-like run (ivanet-tiny-synthetic), then the fine-tune example of docs/use.md run as
written — `mtl prepare coco` of a custom COCO folder (two classes with their own ids, made here from the
synthetic city's instance maps with pycocotools) and `mtl train --from RUN --data data/mine` — and the
outcome checked with pycocotools: the fine-tuned model's detections carry the folder's own image and
category ids and score with COCOeval as `mtl eval` says, and it learns (the floors below, measured).
Weights of another backbone are refused in one line naming both, unless model.partial_weights.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mtlcli.engine.checkpoint import load_checkpoint
from mtlcli.errors import UserError
from tests.viz.conftest import error_line, run_cli

DOCS = Path(__file__).resolve().parents[2] / "docs" / "use.md"
CATEGORIES = {26: (5, "car"), 24: (9, "pedestrian")}  # Cityscapes label id -> (the folder's id, name)
# Floors, measured on the 6 + 3 image synthetic city of tests/conftest.py (64x128), 8 + 8 iterations:
LOSS_DROP = 0.6  # fine-tune's mean loss of its last two logged iterations / of its first two (measured 0.42)
PIXEL_ACCURACY = 0.85  # of the fine-tuned semantic maps against the folder's masks (measured 0.90)


def documented_commands() -> list[list[str]]:
    """The `mtl ...` lines of docs/use.md's first code block under "Fine-tune on your own data"."""
    text = DOCS.read_text().split("## Fine-tune on your own data", 1)[1]
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).replace("\\\n", " ")
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("mtl ")]


def custom_coco_folder(city: Path, work: Path) -> None:
    """images/{train,val}/*.png and ann/{train,val}.json: the city's cars and persons as COCO instances
    (RLE, boxes and areas by pycocotools), non-contiguous category ids, image ids of its own."""
    (work / "ann").mkdir(parents=True)
    for split, first_id in (("train", 100), ("val", 700)):
        images, anns = [], []
        for k, png in enumerate(sorted((city / "leftImg8bit" / split).rglob("*_leftImg8bit.png"))):
            name = f"{split}/{png.name.replace('_leftImg8bit', '')}"
            (work / "images" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(png, work / "images" / name)
            gt = png.parent.as_posix().replace("leftImg8bit", "gtFine") + "/" + png.name
            ids = np.array(Image.open(gt.replace("leftImg8bit.png", "gtFine_instanceIds.png")))
            image_id = first_id + 7 * k
            images.append({"id": image_id, "file_name": name, "height": ids.shape[0], "width": ids.shape[1]})
            for value in np.unique(ids):
                if value < 1000 or value // 1000 not in CATEGORIES:
                    continue
                rle = mask_utils.encode(np.asfortranarray((ids == value).astype(np.uint8)))
                anns.append(
                    {
                        "id": first_id * 10 + len(anns),
                        "image_id": image_id,
                        "category_id": CATEGORIES[value // 1000][0],
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                        "area": float(mask_utils.area(rle)),
                        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                        "iscrowd": 0,
                    }
                )
        categories = [{"id": i, "name": n} for i, n in CATEGORIES.values()]
        (work / "ann" / f"{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": categories})
        )


@pytest.fixture(scope="module")
def journey(synthetic_source, synthetic_prepared, tmp_path_factory) -> dict:
    """The quickstart-like run and the documented fine-tune, run once in a fresh working folder."""
    work = tmp_path_factory.mktemp("journey")
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    try:
        quick = ["train", "--recipe", "ivanet-tiny-synthetic", "--data", str(synthetic_prepared), "-q"]
        short = ["train.iterations=8", "train.batch_size=2", "model.input_size=[64,128]", "train.log_interval=1"]
        assert run_cli([*quick, *[a for s in [*short, "eval.interval=0"] for a in ("--set", s)]]) == 0
        custom_coco_folder(synthetic_source, work)
        printed = []
        for argv in documented_commands():
            capture = Path(work / "out.txt")
            with capture.open("w") as f, pytest.MonkeyPatch.context() as m:
                m.setattr("sys.stdout", f)
                code = run_cli(argv)
            printed += capture.read_text().splitlines()
            assert code == 0, (argv, printed)
    finally:
        mp.undo()
    return {"work": work, "printed": printed}


def test_the_documented_finetune_takes_the_runs_recipe_and_the_datas_classes(journey):
    work, printed = journey["work"], journey["printed"]
    assert [c[:2] for c in documented_commands()] == [["prepare", "coco"], ["train", "--from"]]
    source = load_checkpoint(work / "runs" / "ivanet-tiny-synthetic" / "exp1" / "checkpoints" / "last.pt")
    run = work / "runs" / "finetune-mine" / "exp1"
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    # the classes of the data, with the folder's own category ids
    assert state["classes"]["det_classes"] == ["car", "pedestrian"] and state["classes"]["det_category_ids"] == [5, 9]
    # the architecture and the schedule of the checkpoint's recipe; no ImageNet download
    old, new = source["recipe"], state["recipe"]
    assert {
        k: v for k, v in new["model"].items() if k not in ("num_det_classes", "num_seg_classes", "init_weights")
    } == {
        **{k: v for k, v in old["model"].items() if k not in ("num_det_classes", "num_seg_classes")},
        "pretrained_backbone": False,
    }
    assert new["train"] == old["train"] and new["train"]["iterations"] == state["iteration"] == 8
    # matching tensors loaded, the heads re-initialised and named in one line
    (line,) = [ln for ln in printed if ln.startswith("weights from")]
    assert "classes 8 det / 19 seg -> 2 det / 3 seg" in line
    assert "seg_head.classifier" in line and "det_head.classification_head" in line
    assert "backbone" not in line.split("re-initialised")[1]


def test_the_finetuned_model_learns_and_scores_with_pycocotools(journey, capsys):
    work = journey["work"]
    run = work / "runs" / "finetune-mine" / "exp1"
    logged = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if r["type"] == "train"]
    assert len(losses) == 8 and np.mean(losses[-2:]) <= LOSS_DROP * np.mean(losses[:2]), losses

    preds = work / "preds"
    argv = ["eval", "--run", str(run), "--metric", "coco-bbox", "--metric", "miou", "--save-predictions", str(preds)]
    assert run_cli([*argv, "--out", str(work / "scores.json"), "-q"]) == 0
    ours = json.loads((work / "scores.json").read_text())
    assert ours["checkpoint"] == str(run / "checkpoints" / "last.pt")
    # the outside tool on the folder's own annotation file: same ids, same AP
    gt = COCO(str(work / "ann" / "val.json"))
    detections = json.loads((preds / "detections.json").read_text())
    assert detections and {d["image_id"] for d in detections} <= set(gt.getImgIds())
    assert {d["category_id"] for d in detections} <= {5, 9}
    coco_eval = COCOeval(gt, gt.loadRes(detections), "bbox")
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    assert ours["metrics"]["coco-bbox"] == pytest.approx(coco_eval.stats[0], abs=1e-9)
    # the semantic maps against the folder's masks, decoded by pycocotools
    correct = total = 0
    for image in gt.dataset["images"]:
        truth = np.zeros((image["height"], image["width"]), np.uint8)
        for a in gt.loadAnns(gt.getAnnIds(imgIds=image["id"])):
            truth[gt.annToMask(a) > 0] = 1 if a["category_id"] == 5 else 2
        predicted = np.array(Image.open(preds / "semantic" / image["file_name"]))
        correct, total = correct + int((predicted == truth).sum()), total + truth.size
    assert correct / total >= PIXEL_ACCURACY


def test_weights_of_another_backbone_are_refused_unless_partial(journey, capsys, monkeypatch):
    work = journey["work"]
    monkeypatch.chdir(work)
    ckpt = "runs/ivanet-tiny-synthetic/exp1/checkpoints/last.pt"
    argv = ["train", "--recipe", "ivanet-custom", "--data", "data/mine", "--weights", ckpt, "-q"]
    capsys.readouterr()
    assert run_cli(argv) == 2  # refused before anything is built or downloaded
    line = error_line(capsys)
    assert "is ivanet with backbone resnet18 but the recipe builds ivanet with backbone resnet50" in line
    assert "model.partial_weights=true" in line and not (work / "runs" / "ivanet-custom").exists()

    from mtlcli.engine.finetune import init_weights
    from mtlcli.models import build_model

    model = build_model("ivanet", backbone="resnet34", input_size=[64, 128], num_det_classes=2, num_seg_classes=3)
    recipe = {"model": {"name": "ivanet", "backbone": "resnet34", "init_weights": ckpt}}
    with pytest.raises(UserError, match="backbone resnet18 but the recipe builds ivanet with backbone resnet34"):
        init_weights(model, recipe, None, None)
    report = init_weights(model, {"model": {**recipe["model"], "partial_weights": True}}, None, None)
    assert 0 < report["loaded"] < report["total"]


def test_from_takes_no_other_recipe_or_weights_and_names_what_it_misses(tmp_path, capsys):
    for extra, says in (
        (["--recipe", "ivanet-tiny-synthetic"], "--recipe does too"),
        (["--weights", str(tmp_path / "w.pt")], "--weights does too"),
        (["--resume", "--out", str(tmp_path / "r")], "--resume does too"),
    ):
        assert run_cli(["train", "--from", str(tmp_path / "run"), *extra]) == 2
        assert says in error_line(capsys)
    assert run_cli(["train", "--from", str(tmp_path / "nowhere"), "--data", str(tmp_path)]) == 2
    assert "--from" in error_line(capsys) and not (tmp_path / "runs").exists()
