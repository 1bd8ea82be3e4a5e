"""DDP on CPU: 2 processes with gloo give the single-process result on the same global batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mtlcli.engine.checkpoint import load_checkpoint
from mtlcli.engine.train import train
from tests.engine.tiny_model import (  # noqa: F401 (fixture)
    REGISTRY_ENTRY,
    REGISTRY_NAME,
    tiny_recipe,
    tiny_registered,
    train_losses,
)

pytestmark = pytest.mark.usefixtures("tiny_registered")

# Global batch 4 (2 images per process under DDP), random flips and scales seeded per sample, an
# evaluation at the end (gathered across ranks by `evaluate`).
SETTINGS = [
    "train.iterations=6",
    "train.batch_size=4",
    "train.log_interval=2",
    "train.checkpoint_interval=3",
    "data.augmentation=cityscapes",
    "data.scale_range=[0.7, 1.3]",
    "data.flip=true",
    "eval.metrics=miou",
    "eval.interval=6",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, recipe: dict, run_dir: str) -> None:
    """One torchrun-like process: the environment torchrun would set, then the plain train()."""
    from mtlcli.models import MODELS

    MODELS[REGISTRY_NAME] = REGISTRY_ENTRY  # a fresh interpreter: register the test model again
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
    )
    torch.set_num_threads(1)
    train(recipe, Path(run_dir), device="cpu", progress=False)


def test_two_gloo_processes_match_one_process(tmp_path, synthetic_prepared):
    recipe = tiny_recipe(tmp_path, synthetic_prepared, *SETTINGS)
    single = tmp_path / "single"
    result = train(recipe, single, device="cpu", progress=False)

    ddp = tmp_path / "ddp"
    mp.start_processes(_worker, args=(2, _free_port(), recipe, str(ddp)), nprocs=2, join=True, start_method="spawn")

    a, b = load_checkpoint(single / "checkpoints" / "last.pt"), load_checkpoint(ddp / "checkpoints" / "last.pt")
    assert b["iteration"] == 6 and len(b["rng"]) == 2  # rank 0 wrote, with both processes' RNG states
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-5, atol=1e-6)
    la, lb = train_losses(single), train_losses(ddp)
    assert [r["iteration"] for r in lb] == [2, 4, 6]
    for ra, rb in zip(la, lb, strict=True):  # losses reduced across ranks = the single process's losses
        for k in ra["losses"]:
            assert rb["losses"][k] == pytest.approx(ra["losses"][k], rel=1e-5)
    assert b["best"]["value"] == pytest.approx(result["best"]["value"], abs=1e-6)
    assert not list(ddp.glob("**/.*.tmp"))
