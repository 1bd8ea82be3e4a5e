"""Exact resume: N iterations straight == N/2, Ctrl-C, --resume, N/2 (losses and weights bit for bit)."""

from __future__ import annotations

import pytest
import torch

from mtlcli.engine.checkpoint import load_checkpoint
from mtlcli.engine.train import train
from tests.engine.tiny_model import tiny_recipe, tiny_registered, train_losses  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("tiny_registered")

# Everything that draws random numbers: dropout in the model, random scale / crop / flip per sample,
# shuffled data order; Adam's moments and a cosine schedule with warm-up in the optimiser state.
RANDOM = [
    "model.dropout=0.3",
    "data.augmentation=cityscapes",
    "data.scale_range=[0.6, 1.4]",
    "data.crop_size=[48, 96]",
    "data.flip=true",
    "train.optimizer=adam",
    "train.lr=0.01",
    "train.schedule=cosine",
    "train.warmup_iters=2",
    "train.iterations=8",
    "train.checkpoint_interval=100",
]


def test_interrupted_and_resumed_run_equals_the_straight_run(tmp_path, synthetic_prepared):
    straight = tmp_path / "straight"
    train(tiny_recipe(tmp_path, synthetic_prepared, *RANDOM), straight, progress=False)

    resumed = tmp_path / "resumed"
    # Ctrl-C during the 5th iteration's forward: last.pt must hold the state after 4 iterations.
    with pytest.raises(KeyboardInterrupt):
        train(
            tiny_recipe(tmp_path, synthetic_prepared, *RANDOM, "model.fail_at=5", "model.failure=interrupt"),
            resumed,
            progress=False,
        )
    assert load_checkpoint(resumed / "checkpoints" / "last.pt")["iteration"] == 4
    # Another worker count on purpose: augmentation is seeded per sample, not per worker.
    train(tiny_recipe(tmp_path, synthetic_prepared, *RANDOM, "train.workers=2"), resumed, resume=True, progress=False)

    a, b = train_losses(straight), train_losses(resumed)
    assert [r["iteration"] for r in b] == list(range(1, 9))
    assert [r["losses"] for r in a] == [r["losses"] for r in b]
    assert [r["lr"] for r in a] == [r["lr"] for r in b]
    sa = load_checkpoint(straight / "checkpoints" / "last.pt")
    sb = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert sa["iteration"] == sb["iteration"] == 8
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    for pid, state in sa["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, sb["optimizer"]["state"][pid][k]), (pid, k)
    assert torch.equal(sa["rng"][0]["torch"], sb["rng"][0]["torch"])


def test_a_cached_run_equals_the_uncached_run_and_resumes_exactly(tmp_path, synthetic_prepared):
    # data.cache = "ram" changes where the pixels come from, not the data order, the augmentation
    # draws or the training RNG: the same losses and weights, through an interrupt and a resume with
    # loader workers (which read the cache the main process filled before forking them).
    straight = tmp_path / "straight"
    train(tiny_recipe(tmp_path, synthetic_prepared, *RANDOM), straight, progress=False)
    cached = tmp_path / "cached"
    with pytest.raises(KeyboardInterrupt):
        train(
            tiny_recipe(
                tmp_path, synthetic_prepared, *RANDOM, "data.cache=ram", "model.fail_at=5", "model.failure=interrupt"
            ),
            cached,
            progress=False,
        )
    train(
        tiny_recipe(tmp_path, synthetic_prepared, *RANDOM, "data.cache=ram", "train.workers=2"),
        cached,
        resume=True,
        progress=False,
    )
    assert [r["losses"] for r in train_losses(straight)] == [r["losses"] for r in train_losses(cached)]
    sa = load_checkpoint(straight / "checkpoints" / "last.pt")
    sb = load_checkpoint(cached / "checkpoints" / "last.pt")
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k


def test_resume_from_a_periodic_checkpoint_and_nothing_left_to_do(tmp_path, synthetic_prepared):
    run = tmp_path / "run"
    base = ["train.iterations=6", "train.checkpoint_interval=3"]
    straight = tmp_path / "straight"
    train(tiny_recipe(tmp_path, synthetic_prepared, *base), straight, progress=False)
    # A run that stopped at its periodic checkpoint (iteration 3 of 6), as after a crash, then resumed.
    train(
        tiny_recipe(tmp_path, synthetic_prepared, "train.iterations=3", "train.checkpoint_interval=3"),
        run,
        progress=False,
    )
    train(tiny_recipe(tmp_path, synthetic_prepared, *base), run, resume=True, progress=False)
    assert [r["losses"] for r in train_losses(straight)] == [r["losses"] for r in train_losses(run)]

    from mtlcli.errors import UserError

    with pytest.raises(UserError, match="already finished 6 of 6 iterations — raise train.iterations"):
        train(tiny_recipe(tmp_path, synthetic_prepared, *base), run, resume=True, progress=False)
