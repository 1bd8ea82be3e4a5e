"""Shared fixtures: a tiny synthetic Cityscapes tree and its prepared dataset, built once per session.

Both are read-only for tests: copy them (shutil.copytree) before changing anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SYNTHETIC_TRAIN, SYNTHETIC_VAL, SYNTHETIC_SIZE = 6, 3, (64, 128)


@pytest.fixture(scope="session")
def synthetic_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic city in the Cityscapes layout: 6 train + 3 val images of 64x128 (H x W), seed 0,
    with leftImg8bit PNGs and gtFine polygons / labelIds / instanceIds."""
    from mtlcli.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic_source") / "cityscapes"
    return generate_synthetic(root, train=SYNTHETIC_TRAIN, val=SYNTHETIC_VAL, size=SYNTHETIC_SIZE, seed=0, quiet=True)


@pytest.fixture(scope="session")
def synthetic_prepared(synthetic_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`synthetic_source` prepared with `prepare_cityscapes` (workers=1): the root of a prepared dataset
    (dataset.json, train/ and val/ with instances.json, semantic/ and dt/)."""
    from mtlcli.data.cityscapes import prepare_cityscapes

    out = tmp_path_factory.mktemp("synthetic_prepared") / "data"
    prepare_cityscapes(synthetic_source, out, workers=1, quiet=True)
    return out


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs `-n 2`), one torch thread per worker: the suite's models are
    small enough that a step is bound by per-op overhead rather than arithmetic, so two single-threaded
    workers on two cores finish the suite in about half the time of one process with two threads, and
    the numerics no longer depend on how many cores the machine has."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
