"""Interdependent multi-task network: tiny configuration, losses, target assignment, staged freezing."""

from __future__ import annotations

import fnmatch
import json
import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from mtlcli.errors import UserError
from mtlcli.models import build_model
from mtlcli.models.imtl import build_imtl
from mtlcli.models.imtl_detector import assign_targets, decode_boxes, load_anchors
from mtlcli.recipes import load_recipe

TINY = dict(
    width=8,
    layers=(1, 2, 3, 1),
    aspp_width=32,
    decoder_width=32,
    skip_width=8,
    det_width=32,
    trident_width=64,
    trident_mid=16,
    trident_blocks=1,
    input_size=(64, 128),
    dropout=0.0,
)
ANCHORS = [[4, 8], [8, 8], [8, 16], [16, 16], [24, 12], [16, 32], [32, 32], [48, 40], [96, 60]]
LOSSES = {"loss_seg", "loss_seg_aux1", "loss_seg_aux2", "loss_det_box", "loss_det_obj", "loss_det_cls"}


def tiny(**kw):
    torch.manual_seed(0)
    return build_imtl(num_det_classes=3, num_seg_classes=5, anchors=ANCHORS, **{**TINY, **kw})


def scenes(n: int = 2, h: int = 64, w: int = 128, seed: int = 0):
    """Images with a bright box per object on a dark two-class background, boxes and semantic maps."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n):
        sem = torch.zeros(h, w, dtype=torch.int64)
        sem[h // 2 :] = 1
        img = torch.stack([sem.float() * 0.3] * 3) + 0.05 * torch.rand(3, h, w, generator=g)
        boxes, labels = [], []
        for k in range(2):
            bw, bh = int(torch.randint(12, 30, (1,), generator=g)), int(torch.randint(12, 30, (1,), generator=g))
            x0 = int(torch.randint(0, w - bw, (1,), generator=g)) if k == 0 else w - bw - 2
            y0 = int(torch.randint(0, h - bh, (1,), generator=g))
            label = k + 1
            img[label - 1, y0 : y0 + bh, x0 : x0 + bw] = 1.0
            sem[y0 : y0 + bh, x0 : x0 + bw] = 1 + label
            boxes.append([x0, y0, x0 + bw, y0 + bh])
            labels.append(label)
        images.append(img)
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "labels": torch.tensor(labels),
                "semantic": sem,
                "iscrowd": torch.zeros(len(boxes), dtype=torch.int64),
            }
        )
    return images, targets


def test_train_step_finite_named_losses_and_gradients_everywhere():
    model = tiny().train()
    images, targets = scenes()
    losses = model(images, targets)
    assert set(losses) == LOSSES
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    for part in ("encoder", "bottleneck", "decoder", "detector"):
        grads = [p.grad for p in getattr(model, part).parameters()]
        assert all(g is not None for g in grads), part
        assert sum(float(g.abs().sum()) for g in grads) > 0, part
    assert model.encoder.stem[0].weight.grad.abs().sum() > 0


def test_image_without_objects_and_unlabelled_pixels_train():
    model = tiny().train()
    images = [torch.rand(3, 64, 128)]
    targets = [
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.int64),
            "semantic": torch.full((64, 128), 255, dtype=torch.int64),
        }
    ]
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_seg"] == 0 and losses["loss_det_box"] == 0 and losses["loss_det_obj"] > 0


def test_network_shapes_and_strides():
    model = tiny().eval()
    with torch.no_grad():
        raw = model.network(torch.zeros(2, 3, 64, 128))
    assert tuple(raw["logits"].shape) == (2, 5, 64, 128)
    assert tuple(raw["aux1"].shape) == (2, 5, 16, 32)  # AdapNet++: aux1 (weight 0.6) at stride 4
    assert tuple(raw["aux2"].shape) == (2, 5, 8, 16)  # aux2 (0.5) at stride 8
    assert model.aux_weights == (0.6, 0.5)
    assert [tuple(d.shape) for d in raw["det"]] == [(2, 3, 8, 4, 8)] * 3  # 3 anchors x (4 + 1 + 3) at stride 16


def test_eval_outputs_in_the_original_frame():
    """One confident prediction, placed by hand, comes back scaled to each image's own size."""
    model = tiny(score_thresh=0.5).eval()
    with torch.no_grad():
        raw = model.network(torch.zeros(1, 3, 64, 128))
    det = [torch.full_like(d, -20.0) for d in raw["det"]]
    # branch 1 (dilation 2), its anchor 0 = anchors[3] = 16x16; cell y=2, x=5; centre offsets 0.5
    det[1][0, 0, :4, 2, 5] = 0.0
    det[1][0, 0, 4, 2, 5] = 10.0  # objectness
    det[1][0, 0, 5 + 2, 2, 5] = 10.0  # class 3
    raw = {**raw, "det": det}
    out = model.postprocess(raw, [(128, 512)])[0]  # original image twice as tall, four times as wide
    assert out["labels"].tolist() == [3]
    centre = (5.5 * 16, 2.5 * 16)  # network frame
    expected = torch.tensor([[(centre[0] - 8) * 4, (centre[1] - 8) * 2, (centre[0] + 8) * 4, (centre[1] + 8) * 2]])
    torch.testing.assert_close(out["boxes"], expected)
    assert tuple(out["sem_seg"].shape) == (5, 128, 512)

    images = [torch.rand(3, 50, 90), torch.rand(3, 128, 100)]
    with torch.no_grad():
        outs = model.__class__.forward(model, images)
    for o, (h, w) in zip(outs, [(50, 90), (128, 100)], strict=True):
        assert set(o) == {"boxes", "scores", "labels", "sem_seg"}
        assert tuple(o["sem_seg"].shape) == (5, h, w)
        if len(o["boxes"]):
            assert float(o["boxes"][:, 0::2].max()) <= w and float(o["boxes"][:, 1::2].max()) <= h


def test_yolo_assignment_on_a_hand_built_case():
    anchors = torch.tensor(ANCHORS, dtype=torch.float32)
    boxes = torch.tensor(
        [
            [20.0, 4.0, 36.0, 20.0],  # 16x16 -> anchor 3 (branch 1, anchor 0), centre (28, 12) -> cell (0, 1)
            [0.0, 0.0, 96.0, 60.0],  # 96x60 -> anchor 8 (branch 2, anchor 2), centre (48, 30) -> cell (1, 3)
            [21.0, 5.0, 35.0, 19.0],  # 14x14 also anchor 3 in the same cell: loses to the first
        ]
    )
    a = assign_targets(boxes, torch.tensor([1, 2, 3]), anchors, grid=(4, 8), stride=(16.0, 16.0))
    assert a["index"].tolist() == [(3 * 4 + 0) * 8 + 1, (8 * 4 + 1) * 8 + 3]
    assert a["labels"].tolist() == [0, 1]
    torch.testing.assert_close(a["box"], torch.tensor([[28 / 16 - 1, 12 / 16, 0.0, 0.0], [0.0, 30 / 16 - 1, 0.0, 0.0]]))
    # decoding the target offsets gives the boxes back
    raw = torch.zeros(9, 4, 4, 8)
    t = a["box"][0]
    raw[3, 0, 0, 1], raw[3, 1, 0, 1] = torch.logit(t[0]), torch.logit(t[1])
    torch.testing.assert_close(decode_boxes(raw, anchors, (16.0, 16.0))[3, 0, 1], boxes[0])


def test_each_branch_has_its_own_head_unless_shared():
    """The trident branches share their blocks' weights (the paper); the output convs are per branch by
    default (inferred), so the small-object branch can score objects the large one must not."""
    per_branch, shared = tiny(), tiny(shared_head=True)
    assert len(per_branch.detector.heads) == 3 and len(shared.detector.heads) == 1
    extra = sum(p.numel() for p in per_branch.parameters()) - sum(p.numel() for p in shared.parameters())
    assert extra == 2 * sum(p.numel() for p in shared.detector.heads[0].parameters())
    # a checkpoint of the shared form (`detector.head.*`, before per-branch heads) loads into the
    # per-branch model and predicts exactly as before
    old = {k.replace("detector.heads.0.", "detector.head."): v for k, v in shared.state_dict().items()}
    per_branch.load_state_dict(old)
    x = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        for a, b in zip(shared.eval().network(x)["det"], per_branch.eval().network(x)["det"], strict=True):
            torch.testing.assert_close(a, b)


def test_focal_losses_on_a_hand_built_case():
    """All-zero logits, one object: objectness and class losses are torchvision's focal loss summed and
    divided by one positive; the box loss is the smooth L1 of the offsets."""
    model = tiny(ignore_iou=1.0)
    K, h, w = 3, 4, 8
    det = [torch.zeros(1, 3, 5 + K, h, w) for _ in range(3)]
    target = {"boxes": torch.tensor([[20.0, 4.0, 36.0, 20.0]]), "labels": torch.tensor([2])}
    losses = model.detection_loss(det, [target])
    P = 3 * 3 * h * w
    obj_t = torch.zeros(P)
    obj_t[(3 * 4 + 0) * 8 + 1] = 1
    torch.testing.assert_close(losses["loss_det_obj"], sigmoid_focal_loss(torch.zeros(P), obj_t, 0.25, 2.0, "sum"))
    ln2 = math.log(2.0)
    assert losses["loss_det_obj"].item() == pytest.approx((P - 1) * 0.75 * 0.25 * ln2 + 0.25 * 0.25 * ln2, rel=1e-5)
    assert losses["loss_det_cls"].item() == pytest.approx(0.25 * 0.25 * ln2 + 2 * 0.75 * 0.25 * ln2, rel=1e-5)
    beta = 1 / 9
    dx, dy = abs(0.5 - (28 / 16 - 1)), abs(0.5 - 12 / 16)
    expected_box = sum(d - beta / 2 if d >= beta else 0.5 * d * d / beta for d in (dx, dy))
    assert losses["loss_det_box"].item() == pytest.approx(expected_box, rel=1e-5)


def test_crowd_boxes_are_not_positives():
    model = tiny()
    det = [torch.zeros(1, 3, 8, 4, 8) for _ in range(3)]
    crowd = {
        "boxes": torch.tensor([[20.0, 4.0, 36.0, 20.0]]),
        "labels": torch.tensor([1]),
        "iscrowd": torch.tensor([1]),
    }
    losses = model.detection_loss(det, [crowd])
    assert losses["loss_det_box"] == 0 and losses["loss_det_cls"] == 0


def test_short_run_lowers_the_loss():
    model = tiny().train()
    images, targets = scenes(2, seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for _ in range(25):
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    first, last = history[0], history[-1]
    assert sum(last.values()) < 0.6 * sum(first.values())
    assert last["loss_seg"] < first["loss_seg"] and last["loss_det_obj"] < first["loss_det_obj"]


@pytest.mark.parametrize("recipe", ["imtl-cityscapes", "imtl-tiny-synthetic"])
def test_recipe_stage_patterns_select_the_intended_modules(recipe):
    r = load_recipe(recipe)
    model = tiny()
    names = [n for n, _ in model.named_parameters()]
    stages = r["train"]["stages"]
    assert [s["name"] for s in stages] == ["all", "segmentation", "detection", "all-finetune"]

    def frozen(stage):
        return {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in stage["freeze"])}

    detector = {n for n in names if n.startswith("detector.")}
    assert detector and frozen(stages[0]) == set() and frozen(stages[3]) == set()
    assert frozen(stages[1]) == detector
    assert frozen(stages[2]) == set(names) - detector
    # every weighted loss name is one the model returns (a typo would silently weigh nothing)
    for stage in stages:
        assert set(stage["loss_weights"]) <= LOSSES
    assert set(stages[1]["loss_weights"]) == {n for n in LOSSES if n.startswith("loss_det")}
    assert set(stages[2]["loss_weights"]) == {n for n in LOSSES if n.startswith("loss_seg")}
    assert sum(s["iterations"] for s in stages[:1]) and r["train"]["eps"] == 1e-10


def test_recipe_label_map_gives_the_papers_classes():
    lm = load_recipe("imtl-cityscapes")["data"]["label_map"]
    seg = list(dict.fromkeys(lm["seg"].values()))
    det = list(dict.fromkeys(lm["det"].values()))
    assert seg == [
        "road",
        "sidewalk",
        "building",
        "fence",
        "pole",
        "traffic sign",
        "vegetation",
        "sky",
        "pedestrian",
        "rider/cycle",
        "car/truck/bus",
    ]
    assert det == ["car/truck/bus", "person/rider", "bicycle/motorcycle"]


def test_full_model_parameter_count_matches_the_paper():
    with torch.device("meta"):
        n = sum(p.numel() for p in build_model("imtl", anchors=ANCHORS).parameters())
    assert abs(n - 37.9e6) <= 0.03 * 37.9e6, n


def test_detector_reads_both_decoder_levels():
    """The paper's multi-level features: the detector's output depends on the stride-8 up-step + skip
    map as well as the stride-4 one (the single-level form does not read it)."""
    model = tiny().eval()
    with torch.no_grad():
        s1, s2, s4 = model.encoder(torch.rand(1, 3, 64, 128))
        b = model.bottleneck(s4)
        seg = model.decoder(b, s1, s2)
        assert tuple(seg["up1_skip"].shape[-2:]) == (8, 16) and tuple(seg["up2_skip"].shape[-2:]) == (16, 32)
        base = model.detector(seg["up2_skip"], b, seg["up1_skip"])
        other = model.detector(seg["up2_skip"], b, torch.rand_like(seg["up1_skip"]))
    assert not torch.allclose(base[0], other[0])
    single = tiny(detector_levels=1)
    assert sum(p.numel() for p in single.parameters()) < sum(p.numel() for p in model.parameters())


def test_dropout_in_block4_and_just_before_the_trident_block():
    model = build_imtl(num_det_classes=3, num_seg_classes=5, anchors=ANCHORS, **{**TINY, "dropout": 0.5})
    block4_drops = [m.p for m in model.encoder.block4.modules() if isinstance(m, torch.nn.Dropout)]
    assert block4_drops == [0.5]
    order = []
    for m in model.detector.modules():
        if isinstance(m, torch.nn.Dropout):
            m.register_forward_hook(lambda *_: order.append("dropout"))
    model.detector.trident[0].register_forward_pre_hook(lambda *_: order.append("trident"))
    model.detector.entry.register_forward_hook(lambda *_: order.append("entry"))
    with torch.no_grad():
        model.eval().network(torch.rand(1, 3, 64, 128))
    assert order[:3] == ["entry", "dropout", "trident"]
    full = [
        m.p for m in build_imtl(anchors=ANCHORS, width=8).encoder.block4.modules() if isinstance(m, torch.nn.Dropout)
    ]
    assert full == [0.5] and isinstance(
        build_imtl(anchors=ANCHORS, width=8).encoder.block4[2].dropout, torch.nn.Dropout
    )


def test_anchors_from_file_rescaled_and_sorted(tmp_path):
    path = tmp_path / "anchors.json"
    path.write_text(json.dumps({"anchors": [[40, 20], [10, 10], [20, 20]] * 3, "input_size": [128, 256]}))
    a = load_anchors(str(path), (64, 128))
    assert a.shape == (9, 2)
    assert a[:3].tolist() == [[5.0, 5.0]] * 3 and a[-1].tolist() == [20.0, 10.0]
    with pytest.raises(UserError, match="mtl anchors"):
        load_anchors(str(tmp_path / "missing.json"), (64, 128))
    with pytest.raises(UserError, match="multiple of 3"):
        load_anchors([[1, 2], [3, 4]], (64, 128))


def test_encoder_weights_from_a_local_file(tmp_path, monkeypatch):
    source = tiny()
    path = tmp_path / "encoder.pth"
    torch.save({f"encoder.{k}": v for k, v in source.encoder.state_dict().items()}, path)
    torch.manual_seed(5)
    model = build_imtl(
        num_det_classes=3,
        num_seg_classes=5,
        anchors=ANCHORS,
        pretrained_backbone=str(path),
        **{k: v for k, v in TINY.items()},
    )
    for key, value in source.encoder.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[key], value)
    monkeypatch.setitem(__import__("sys").modules, "timm", None)  # timm not installed: one clear line
    with pytest.raises(UserError, match="pip install timm"):
        build_imtl(pretrained_backbone=True, **TINY)
    with pytest.raises(UserError, match="do not fit"):
        build_imtl(pretrained_backbone=str(path), **{**TINY, "width": 16})


def test_timm_resnetv2_50_keys_map_onto_the_encoder(tmp_path):
    """timm's resnetv2_50 (randomly initialised: no download) saved to a local file loads into the
    full-size encoder: every tensor lands, a multiscale unit's 3x3 is the two halves of timm's, and
    with the multiscale dilation set to 1 the first two blocks compute exactly what timm's stages do."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model("resnetv2_50", pretrained=False).eval()
    path = tmp_path / "resnetv2_50.pth"
    torch.save(ref.state_dict(), path)
    model = build_imtl(anchors=ANCHORS, pretrained_backbone=str(path), multiscale_dilation=1).eval()
    enc, sd = model.encoder.state_dict(), ref.state_dict()
    torch.testing.assert_close(enc["stem.0.weight"], sd["stem.conv.weight"])
    torch.testing.assert_close(enc["post.0.running_var"], sd["norm.running_var"])
    torch.testing.assert_close(enc["block4.0.shortcut.weight"], sd["stages.3.blocks.0.downsample.conv.weight"])
    multi = torch.cat([enc["block3.4.conv2.0.weight"], enc["block3.4.conv2.1.weight"]])
    torch.testing.assert_close(multi, sd["stages.2.blocks.4.conv2.weight"])
    mapped = sum(v.numel() for k, v in sd.items() if not k.startswith("head."))
    assert mapped == sum(v.numel() for v in enc.values())  # nothing left at its initialisation
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        s1, s2, _ = model.encoder(x)
        t = ref.stem(x)
        t1 = ref.stages[0](t)
        t2 = ref.stages[1](t1)
    torch.testing.assert_close(s1, t1)
    torch.testing.assert_close(s2, t2)


def test_he_initialisation_outside_the_encoder(tmp_path):
    """The paper: ImageNet weights for the encoder, "He initialization ... for initializing rest of the
    network". Every conv / deconv weight outside the encoder has the He spread sqrt(2 / fan), biases are
    zero except the detector heads' focal-loss prior, and ImageNet weights still win in the encoder."""
    model = tiny(width=16, aspp_width=64, decoder_width=64, det_width=64, trident_width=128, trident_mid=32)
    checked = 0
    for part in (model.bottleneck, model.decoder, model.detector):
        for name, m in part.named_modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and m.weight.numel() >= 4096:
                fan = (
                    m.weight[0].numel()
                    if isinstance(m, torch.nn.Conv2d)
                    else m.weight.shape[0] * m.weight[0, 0].numel()
                )
                std = float(m.weight.detach().std())
                assert abs(std / math.sqrt(2 / fan) - 1) < 0.1, (name, std, math.sqrt(2 / fan))
                checked += 1
            if isinstance(m, torch.nn.Conv2d) and m.bias is not None and "heads" not in name:
                assert float(m.bias.abs().max()) == 0.0, name
    assert checked >= 10
    # the deconvs are He-initialised too (not the bilinear kernel), unless asked
    assert not torch.allclose(model.decoder.up1[0].weight[0, 1], torch.zeros(4, 4))
    bilinear = tiny(bilinear_upsampling=True).decoder.up1[0].weight
    assert float(bilinear[0, 1].abs().max()) == 0.0 and float(bilinear[0, 0].max()) > 0
    # PyTorch's default init (the earlier behaviour) is a keyword away, and is not He's
    torch_conv = tiny(init="torch").decoder.fuse1[0][0].weight
    assert float(torch_conv.detach().std()) < 0.7 * math.sqrt(2 / torch_conv[0].numel())
    # a local encoder state dict replaces the He start inside the encoder
    reference = tiny(init="torch").encoder.state_dict()
    torch.save(reference, tmp_path / "enc.pth")
    loaded = tiny(pretrained_backbone=str(tmp_path / "enc.pth")).encoder.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    with pytest.raises(UserError, match="init"):
        tiny(init="xavier")
