"""A tiny IvaNet run (boxes + Cityscapes-class segmentation) trained for a few steps on the synthetic
city, built once per session for the predict / API / fine-tuning / export tests. Read-only: write into
tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def ivanet_run(synthetic_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mtlcli.engine.train import train
    from mtlcli.recipes import load_recipe

    recipe = load_recipe(
        "ivanet-tiny-synthetic",
        [
            f"data.root={synthetic_prepared}",
            "train.iterations=2",
            "train.batch_size=2",
            "train.log_interval=1",
            "train.checkpoint_interval=2",
            "eval.interval=2",
            "eval.batch_size=3",
            "eval.metrics=miou",
        ],
    )
    run = tmp_path_factory.mktemp("use") / "ivanet_run"
    train(recipe, run, progress=False)
    return run


@pytest.fixture(scope="session")
def ivanet_model(ivanet_run: Path):
    """`load_model(ivanet_run)` (read-only)."""
    from mtlcli import load_model

    return load_model(ivanet_run)


def write_image(path: Path, size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Path:
    """A random image of `size` (H, W) in `mode`, in the format of the file's suffix."""
    rng = np.random.default_rng(seed)
    h, w = size
    array = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).convert(mode).save(path)
    return path


# --------------------------------------------------------------------------------- exported tiny models

TINY_CARD = {
    "dataset": "synthetic",
    "det_classes": ["person", "car", "bicycle"],
    "seg_classes": ["road", "building", "vegetation", "sky"],
    "palette": [[128, 64, 128], [70, 70, 70], [107, 142, 35], [70, 130, 180]],
    "det_category_ids": [11, 22, 33],
}


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory):
    """`tiny_export(name)` -> (model, path of its ONNX export, export info): the family's tiny
    configuration (3 det / 4 seg classes, TINY_CARD), written once per session with at most 20 detections
    per image (short mask pasting in the two-stage graphs)."""
    import torch

    from mtlcli.export import export_model
    from mtlcli.models import build_model
    from tests.models.test_registry import _kwargs_for

    cache: dict[str, tuple] = {}
    folder = tmp_path_factory.mktemp("exports")

    def get(name: str):
        if name not in cache:
            torch.manual_seed(0)
            model = build_model(name, **_kwargs_for(name, 3, 4)).eval()
            # the untrained tiny imtl detector scores ~1e-4 everywhere: a floor under that keeps detections
            thresh = 1e-5 if name == "imtl" else None
            out = folder / f"{name}.onnx"
            info = export_model(
                model, "onnx", out, dynamic=name == "ivanet", score_thresh=thresh, max_det=20, card=TINY_CARD
            )
            cache[name] = (model, out, info)
        return cache[name]

    return get


TORCH_FREE = (
    "import sys\n"
    "for _name in ('torch', 'torchvision', 'mtlcli'):\n"
    "    sys.modules[_name] = None  # any import of them now fails\n"
    "try:\n"
    "    import torch\n"
    "except ImportError:\n"
    "    pass\n"
    "else:\n"
    "    raise SystemExit('torch could still be imported')\n"
)


def run_docs_example(model: Path, image: Path, folder: Path) -> tuple[list[dict], np.ndarray | None]:
    """The numpy + Pillow + onnxruntime block of docs/deploy.md, run as written in `folder` (model.onnx and
    street.png copied there) by a Python that cannot import torch, torchvision or mtlcli. Returns its
    detections.json and semantic PNG (None when the model does not segment)."""
    import json
    import re
    import shutil
    import subprocess
    import sys

    text = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[-1]
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, folder / "model.onnx")
    shutil.copy(image, folder / "street.png")
    (folder / "example.py").write_text(code)
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", TORCH_FREE + "exec(compile(open('example.py').read(), 'example.py', 'exec'))"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    detections = json.loads((folder / "detections.json").read_text())
    sem = folder / "street_semantic.png"
    return detections, (np.asarray(Image.open(sem)) if sem.is_file() else None)


def same_detections(a: list[dict], b: list[dict], min_iou: float = 0.99, score_tol: float = 1e-3) -> tuple[int, int]:
    """(matched, unmatched) between two COCO-style result lists of one image (category name, bbox IoU,
    score), greedy, best score first."""
    import torch
    from torchvision.ops import box_iou

    def xyxy(d):
        x, y, w, h = d["bbox"]
        return [x, y, x + w, y + h]

    if not a or not b:
        return 0, len(a) + len(b)
    iou = box_iou(torch.tensor([xyxy(d) for d in a]), torch.tensor([xyxy(d) for d in b]))
    used, matched = set(), 0
    for i in sorted(range(len(a)), key=lambda i: -a[i]["score"]):
        for j in iou[i].argsort(descending=True).tolist():
            if j in used or iou[i, j] < min_iou:
                continue
            if a[i]["category_name"] == b[j]["category_name"] and abs(a[i]["score"] - b[j]["score"]) <= score_tol:
                used.add(j)
                matched += 1
                break
    return matched, len(a) + len(b) - 2 * matched
