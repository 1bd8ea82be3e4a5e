"""Optimisers, learning-rate schedules, warm-up, stages and freezing (mtlcli/engine/optim.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtlcli.engine.optim import LRSchedule, apply_freeze, build_optimizer, stages_of
from mtlcli.errors import UserError
from mtlcli.recipes import DEFAULTS, STAGE_DEFAULTS


def train_cfg(**kw) -> dict:
    cfg = {**DEFAULTS["train"], **kw}
    cfg["stages"] = [{**STAGE_DEFAULTS, **s} for s in cfg["stages"]]
    return cfg


def test_multistep_with_linear_warmup():
    s = LRSchedule(
        train_cfg(
            lr=0.1, schedule="multistep", steps=[10, 20], gamma=0.1, iterations=30, warmup_iters=5, warmup_factor=0.01
        )
    )
    assert s.lr_at(0) == pytest.approx(0.1 * 0.01)
    assert s.lr_at(2) == pytest.approx(0.1 * (0.01 * 0.6 + 0.4))  # linear from 0.01 to 1 over 5 iterations
    assert s.lr_at(5) == pytest.approx(0.1)
    assert s.lr_at(9) == pytest.approx(0.1)
    assert s.lr_at(10) == pytest.approx(0.01)
    assert s.lr_at(25) == pytest.approx(0.001)


def test_poly_cosine_constant():
    poly = LRSchedule(train_cfg(lr=1.0, schedule="poly", power=0.9, iterations=100))
    assert poly.lr_at(0) == 1.0
    assert poly.lr_at(50) == pytest.approx(0.5**0.9)
    assert poly.lr_at(99) == pytest.approx(0.01**0.9)
    cos = LRSchedule(train_cfg(lr=1.0, schedule="cosine", iterations=100))
    assert cos.lr_at(0) == 1.0 and cos.lr_at(50) == pytest.approx(0.5) and cos.lr_at(100) == pytest.approx(0.0)
    const = LRSchedule(train_cfg(lr=0.3, schedule="constant", iterations=100))
    assert {const.lr_at(i) for i in (0, 50, 99)} == {0.3}


def test_poly_restarts():
    s = LRSchedule(train_cfg(lr=1.0, schedule="poly", power=1.0, restart_every=10, iterations=30))
    assert [s.lr_at(i) for i in (0, 5, 9, 10, 15, 20)] == pytest.approx([1.0, 0.5, 0.1, 1.0, 0.5, 1.0])


def test_four_stage_schedule_of_the_interdependent_mtl_paper():
    """papers/interdependent-mtl.txt: Adam, poly decay with restarts every 10K; 30K all at 1e-3; 120K
    seg only (detector frozen, W_det = 0) at 1e-3; 120K detector only (W_seg = 0) at 1e-4; 50K all at 1e-4."""
    cfg = train_cfg(
        optimizer="adam",
        schedule="poly",
        power=0.9,
        restart_every=10_000,
        stages=[
            {"name": "all", "iterations": 30_000, "lr": 1e-3},
            {
                "name": "seg",
                "iterations": 120_000,
                "lr": 1e-3,
                "loss_weights": {"loss_det": 0.0, "loss_seg": 40.0},
                "freeze": ["detector.*"],
            },
            {
                "name": "det",
                "iterations": 120_000,
                "lr": 1e-4,
                "loss_weights": {"loss_seg": 0.0},
                "freeze": ["encoder.*", "decoder.*"],
            },
            {"name": "finetune", "iterations": 50_000, "lr": 1e-4},
        ],
    )
    s = LRSchedule(cfg)
    assert [(st.name, st.start, st.end) for st in s.stages] == [
        ("all", 0, 30_000),
        ("seg", 30_000, 150_000),
        ("det", 150_000, 270_000),
        ("finetune", 270_000, 320_000),
    ]
    assert s.lr_at(0) == pytest.approx(1e-3)
    assert s.lr_at(5_000) == pytest.approx(1e-3 * 0.5**0.9)
    assert s.lr_at(30_000) == pytest.approx(1e-3)  # restart at the stage start
    assert s.lr_at(150_000) == pytest.approx(1e-4)
    assert s.lr_at(165_000) == pytest.approx(1e-4 * 0.5**0.9)  # restart every 10K inside a stage
    assert s.lr_at(270_000) == pytest.approx(1e-4)
    assert s.stage_at(149_999).freeze == ["detector.*"]
    assert s.stage_at(150_000).loss_weights == {"loss_seg": 0.0}


def test_stage_loss_weights_extend_the_train_weights():
    stages = stages_of(
        train_cfg(
            loss_weights={"loss_a": 2.0, "loss_b": 3.0},
            stages=[{"iterations": 5, "lr": 0.1, "loss_weights": {"loss_b": 0.0}}],
        )
    )
    assert stages[0].loss_weights == {"loss_a": 2.0, "loss_b": 0.0}
    assert stages[0].name == "stage1"


def test_schedule_writes_the_rate_into_the_optimizer():
    model = nn.Linear(2, 2)
    cfg = train_cfg(lr=0.5, schedule="multistep", steps=[3], gamma=0.5)
    opt = build_optimizer(model, cfg)
    s = LRSchedule(cfg)
    assert s.step(opt, 3) == 0.25
    assert opt.param_groups[0]["lr"] == 0.25
    assert s.state_dict()["last_iteration"] == 3


@pytest.mark.parametrize(
    "kw, cls, expect",
    [
        (
            {"optimizer": "sgd", "momentum": 0.8, "nesterov": True, "weight_decay": 1e-3},
            torch.optim.SGD,
            {"momentum": 0.8, "nesterov": True, "weight_decay": 1e-3},
        ),
        (
            {"optimizer": "adam", "betas": [0.5, 0.999], "eps": 1e-10},
            torch.optim.Adam,
            {"betas": (0.5, 0.999), "eps": 1e-10},
        ),
        ({"optimizer": "adamw", "weight_decay": 0.05}, torch.optim.AdamW, {"weight_decay": 0.05}),
    ],
)
def test_build_optimizer(kw, cls, expect):
    opt = build_optimizer(nn.Linear(2, 2), train_cfg(**kw))
    assert type(opt) is cls
    for key, value in expect.items():
        assert opt.param_groups[0][key] == value


def test_nesterov_without_momentum_is_refused():
    with pytest.raises(UserError, match="momentum"):
        build_optimizer(nn.Linear(2, 2), train_cfg(nesterov=True, momentum=0.0))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(2, 2)
        self.detector = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))


def test_freeze_follows_the_stage_and_keeps_what_the_model_froze():
    net = Net()
    net.encoder.bias.requires_grad_(False)  # frozen by the model itself
    trainable = {n: p.requires_grad for n, p in net.named_parameters()}
    frozen = apply_freeze(net, ["detector.*"], trainable)
    assert sorted(frozen) == ["detector.0.bias", "detector.0.weight", "detector.1.bias", "detector.1.weight"]
    assert net.encoder.weight.requires_grad and not net.encoder.bias.requires_grad
    assert not any(p.requires_grad for p in net.detector.parameters())
    apply_freeze(net, [], trainable)  # the next stage unfreezes the detector, not the model's own choice
    assert all(p.requires_grad for p in net.detector.parameters())
    assert not net.encoder.bias.requires_grad


def test_freeze_pattern_that_matches_nothing_names_the_modules():
    with pytest.raises(UserError, match="matches no parameter; top-level modules: detector, encoder"):
        apply_freeze(Net(), ["detecter.*"], {})


def test_frozen_parameters_are_not_updated_by_the_optimizer():
    torch.manual_seed(0)
    net = Net()
    opt = build_optimizer(net, train_cfg(optimizer="sgd", weight_decay=0.1, lr=0.1))
    apply_freeze(net, ["detector.*"], {})
    before = [p.detach().clone() for p in net.detector.parameters()]
    enc_before = net.encoder.weight.detach().clone()
    net.detector(net.encoder(torch.randn(4, 2))).sum().backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, net.detector.parameters(), strict=True))
    assert not torch.equal(enc_before, net.encoder.weight)
    assert math.isfinite(float(net.encoder.weight.detach().sum()))
