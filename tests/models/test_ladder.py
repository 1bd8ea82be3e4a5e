"""Ladder-style DenseNet and its Table 1 baselines, in the tiny configuration."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import DenseNet

from mtlcli.errors import UserError
from mtlcli.models import build_model
from mtlcli.models.ladder import build_ladder_densenet

TINY = dict(
    growth_rate=8,
    block_config=(2, 2, 2, 2),
    num_init_features=16,
    context_width=32,
    context_out=16,
    skip_width=16,
    up_width=16,
    input_size=(64, 128),
)
VARIANTS = ["ladder", "densenet32x", "dilated8x"]
# (logits stride, auxiliary stride) as Table 1 names them: 4x / 32x / dilated 8x + one ladder step to 4x
STRIDES = {"ladder": (4, 32), "densenet32x": (32, None), "dilated8x": (4, 8)}


def tiny(variant: str, num_classes: int = 4, **kw):
    torch.manual_seed(0)
    return build_ladder_densenet(num_seg_classes=num_classes, variant=variant, **{**TINY, **kw})


def stripes(n: int, h: int = 48, w: int = 80, classes: int = 4, seed: int = 0):
    """Images whose colour tells the class: vertical bands of class c painted with colour c."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(classes, 3, generator=g)
    images, targets = [], []
    for _ in range(n):
        edges = sorted(torch.randint(8, w - 8, (classes - 1,), generator=g).tolist())
        sem = torch.zeros(h, w, dtype=torch.int64)
        for c, x0 in enumerate(edges, start=1):
            sem[:, x0:] = c
        img = colours[sem].permute(2, 0, 1) * 0.8 + 0.2 * torch.rand(3, h, w, generator=g)
        images.append(img)
        targets.append({"semantic": sem})
    return images, targets


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_step_finite_losses_and_backbone_gradients(variant):
    model = tiny(variant).train()
    images, targets = stripes(2)
    losses = model(images, targets)
    expected = {"loss_seg"} if variant == "densenet32x" else {"loss_seg", "loss_seg_aux"}
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    stem_grad = model.trunk.stem[0].weight.grad
    first_block_grad = next(model.trunk.blocks[0].parameters()).grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0
    assert first_block_grad is not None and first_block_grad.abs().sum() > 0


def test_losses_are_weighted_seven_to_three():
    model = tiny("ladder").train()
    images, targets = stripes(2)
    batch, tgts, _ = model.preprocess(images, targets)
    raw = model.network(batch)
    sem = torch.stack([t["semantic"] for t in tgts])
    up = torch.nn.functional.interpolate(raw["logits"], size=sem.shape[-2:], mode="bilinear", align_corners=False)
    up_aux = torch.nn.functional.interpolate(raw["aux"], size=sem.shape[-2:], mode="bilinear", align_corners=False)
    losses = model.loss(raw, tgts)
    torch.testing.assert_close(losses["loss_seg"], 0.7 * torch.nn.functional.cross_entropy(up, sem, ignore_index=255))
    torch.testing.assert_close(
        losses["loss_seg_aux"], 0.3 * torch.nn.functional.cross_entropy(up_aux, sem, ignore_index=255)
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_stride_of_each_variant(variant):
    model = tiny(variant).eval()
    h, w = TINY["input_size"]
    with torch.no_grad():
        feats = model.trunk(torch.zeros(1, 3, h, w))
        raw = model.network(torch.zeros(1, 3, h, w))
    dilated = variant == "dilated8x"
    assert [tuple(f.shape[-2:]) for f in feats] == [
        (h // 4, w // 4),
        (h // 8, w // 8),
        (h // 8, w // 8) if dilated else (h // 16, w // 16),
        (h // 8, w // 8) if dilated else (h // 32, w // 32),
    ]
    stride, aux_stride = STRIDES[variant]
    assert model.output_stride == stride and model.aux_stride == aux_stride
    assert tuple(raw["logits"].shape) == (1, 4, h // stride, w // stride)
    if aux_stride is None:
        assert "aux" not in raw
    else:
        assert tuple(raw["aux"].shape) == (1, 4, h // aux_stride, w // aux_stride)


@pytest.mark.parametrize("variant", VARIANTS)
def test_eval_gives_sem_seg_in_each_images_own_size(variant):
    model = tiny(variant).eval()
    images = [torch.rand(3, 37, 61), torch.rand(3, 100, 50)]
    with torch.no_grad():
        out = model(images)
    assert [set(o) for o in out] == [{"sem_seg"}, {"sem_seg"}]
    assert tuple(out[0]["sem_seg"].shape) == (4, 37, 61)
    assert tuple(out[1]["sem_seg"].shape) == (4, 100, 50)
    torch.testing.assert_close(out[1]["sem_seg"].sum(0), torch.ones(100, 50))


def test_all_ignore_target_gives_zero_loss_not_nan():
    model = tiny("ladder").train()
    images = [torch.rand(3, 48, 80)]
    losses = model(images, [{"semantic": torch.full((48, 80), 255, dtype=torch.int64)}])
    assert all(v.item() == 0.0 for v in losses.values())
    sum(losses.values()).backward()


@pytest.mark.parametrize("variant", VARIANTS)
def test_short_run_lowers_the_loss(variant):
    model = tiny(variant).train()
    images, targets = stripes(4, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(25):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert sum(history[-3:]) / 3 < 0.6 * sum(history[:3]) / 3


def test_registry_and_bad_arguments():
    model = build_model("ladder_densenet", variant="dilated8x", num_seg_classes=3, **TINY)
    assert model.variant == "dilated8x"
    with pytest.raises(UserError, match="variant"):
        build_ladder_densenet(variant="dilated4x")
    with pytest.raises(UserError, match="pretrained_backbone"):
        build_ladder_densenet(pretrained_backbone=True, growth_rate=8)


def test_local_pretrained_file_with_torchvision_key_names(tmp_path):
    """torchvision's published .pth files spell dense-layer keys 'norm.1'; they must load, not be skipped."""
    torch.manual_seed(1)
    source = DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16)
    state = {}
    for key, value in source.state_dict().items():
        for new, old in (("norm1", "norm.1"), ("norm2", "norm.2"), ("conv1", "conv.1"), ("conv2", "conv.2")):
            if ".denselayer" in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
        state[key] = value
    path = tmp_path / "densenet.pth"
    torch.save(state, path)

    import mtlcli.models.ladder as ladder
    from mtlcli.models.backbones import load_pretrained

    net = DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16)
    load_pretrained(net, str(path), None, rename=ladder._rename_old_keys)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(net.state_dict()[key], value)
    with pytest.raises(UserError, match="does not exist"):
        load_pretrained(net, str(tmp_path / "missing.pth"), None, rename=ladder._rename_old_keys)
