"""Shared by the journey tests: one tiny IvaNet run trained for a few steps on the synthetic city (read-only:
copy it before changing anything)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def journey_run(synthetic_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ivanet-tiny-synthetic` trained 3 iterations (batch 2) on `synthetic_prepared`: RUN/checkpoints/best.pt
    holds weights, recipe and classes; its recipe's data.root is `synthetic_prepared`."""
    from mtlcli.engine.train import train
    from mtlcli.recipes import load_recipe

    recipe = load_recipe(
        "ivanet-tiny-synthetic",
        [
            f"data.root={synthetic_prepared}",
            "train.iterations=3",
            "train.batch_size=2",
            "train.checkpoint_interval=3",
            "eval.interval=100",
        ],
    )
    out = tmp_path_factory.mktemp("journey") / "run"
    train(recipe, out, progress=False)
    return out
