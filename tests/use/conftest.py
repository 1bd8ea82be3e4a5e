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
