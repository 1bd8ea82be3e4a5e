"""SSD MultiBox maths on hand-built cases: default boxes, matching, hard negatives, loss, decoding."""

from __future__ import annotations

import math

import pytest
import torch

from mtlcli.ops import multibox as mb


def test_ssd_scales_reproduce_the_standard_configurations():
    assert mb.ssd_scales(6) == pytest.approx(mb.SSD300_SCALES)
    assert mb.ssd_scales(7, 0.15, 0.9, 0.07) == pytest.approx(mb.SSD512_SCALES)


def test_default_box_counts_of_ssd300_and_ssd512():
    s300 = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    boxes = mb.default_boxes((300, 300), s300, mb.SSD300_ASPECT_RATIOS, mb.SSD300_SCALES, mb.SSD300_STEPS)
    assert boxes.shape == (8732, 4)
    # the first box: centre (4, 4) (step 8), side 0.1 * 300; the last level's square is centred on the image
    assert boxes[0].tolist() == pytest.approx([4 - 15, 4 - 15, 4 + 15, 4 + 15])
    assert boxes[-4].tolist() == pytest.approx([150 - 132, 150 - 132, 150 + 132, 150 + 132])
    s512 = [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    boxes = mb.default_boxes((512, 512), s512, mb.SSD512_ASPECT_RATIOS, mb.SSD512_SCALES, mb.SSD512_STEPS)
    assert boxes.shape == (24564, 4)
    assert (boxes[0, 2] - boxes[0, 0]).item() == pytest.approx(35.84, abs=1e-3)


def test_rectangular_default_boxes_follow_the_grid():
    boxes = mb.default_boxes((100, 200), [(2, 4)], [[2]], [0.5, 1.0])
    assert boxes.shape == (2 * 4 * 4, 4)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert centres[0].tolist() == pytest.approx([25, 25])  # cell (0, 0) of a 2x4 grid over 100x200
    assert centres[-1].tolist() == pytest.approx([175, 75])


DEFAULTS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],
        [10.0, 0.0, 20.0, 10.0],
        [0.0, 10.0, 10.0, 20.0],
        [10.0, 10.0, 20.0, 20.0],
        [0.0, 0.0, 20.0, 20.0],
    ]
)


def test_matching_threshold_and_best_default_box_of_every_ground_truth():
    gt = torch.tensor([[0.0, 0.0, 10.0, 11.0], [12.0, 12.0, 16.0, 16.0]])  # IoU 0.91 with box 0; 0.16 with box 3
    matches = mb.match_default_boxes(DEFAULTS, gt)
    # box 0 matches gt 0 by threshold; gt 1 overlaps nothing by 0.5 but still takes its best box (3)
    assert matches.tolist() == [0, -1, -1, 1, -1]


def test_crowd_boxes_are_never_positive_and_their_interior_is_ignored():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 20.0]])
    matches = mb.match_default_boxes(DEFAULTS, gt, iscrowd=torch.tensor([0, 1]))
    assert matches[0] == 0
    assert (matches[[1, 3]] == mb.MATCHED_IGNORE).all()  # inside the crowd region
    assert matches[2] == mb.MATCHED_BACKGROUND  # touches no crowd
    assert matches[4] == mb.MATCHED_IGNORE  # half of it (IoA 0.5) is crowd
    only_crowd = mb.match_default_boxes(DEFAULTS, gt[1:], iscrowd=torch.tensor([1]))
    assert (only_crowd >= 0).sum() == 0


def test_matching_without_ground_truth_is_all_background():
    assert mb.match_default_boxes(DEFAULTS, torch.zeros(0, 4)).tolist() == [-1] * 5


def test_hard_negatives_are_the_highest_losses_at_three_per_positive():
    loss = torch.tensor([[0.1, 5.0, 0.3, 4.0, 0.2, 9.0, 3.0, 0.5]])
    positive = torch.zeros(1, 8, dtype=torch.bool)
    positive[0, 1] = True  # the highest-loss box is positive and the 9.0 box is ignored
    ignore = torch.zeros(1, 8, dtype=torch.bool)
    ignore[0, 5] = True
    neg = mb.hard_negative_mask(loss, positive, ignore, neg_pos_ratio=3)
    assert torch.where(neg[0])[0].tolist() == [3, 6, 7]
    # no positives -> no negatives; more negatives requested than exist -> all valid ones, never ignored
    assert not mb.hard_negative_mask(loss, torch.zeros_like(positive), ignore).any()
    many = mb.hard_negative_mask(loss, positive, ignore, neg_pos_ratio=100)
    assert torch.where(many[0])[0].tolist() == [0, 2, 3, 4, 6, 7]


def test_multibox_loss_on_a_hand_built_case():
    num_classes = 3
    gt = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([2])}
    logits = torch.zeros(1, 5, num_classes)
    exact = mb.BOX_CODER.encode_single(gt["boxes"].expand(5, 4), DEFAULTS)[None]
    out = mb.multibox_loss(logits, exact, DEFAULTS, [gt])
    # one positive (box 0) + 3 hard negatives, uniform logits: 4 * log(3) / 1; exact offsets: no box loss
    assert out["loss_cls"].item() == pytest.approx(4 * math.log(3), rel=1e-5)
    assert out["loss_box"].item() == pytest.approx(0.0, abs=1e-6)
    # zero offsets: smooth-L1 of box 0's target encoding, which is zero as the gt equals box 0
    shifted = {"boxes": torch.tensor([[1.0, 0.0, 11.0, 10.0]]), "labels": torch.tensor([1])}
    out = mb.multibox_loss(logits, torch.zeros(1, 5, 4), DEFAULTS, [shifted])
    dx = 10.0 * 1.0 / 10.0  # (centre shift / width) / variance 0.1 = 1.0 -> smooth-L1 0.5
    assert out["loss_box"].item() == pytest.approx(dx - 0.5, rel=1e-5)


def test_multibox_loss_without_objects_is_finite_and_zero():
    logits = torch.randn(1, 5, 3, requires_grad=True)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    out = mb.multibox_loss(logits, torch.zeros(1, 5, 4), DEFAULTS, [empty])
    assert out["loss_cls"].item() == 0 and out["loss_box"].item() == 0
    (out["loss_cls"] + out["loss_box"]).backward()
    assert torch.isfinite(logits.grad).all()


def test_decode_keeps_confident_boxes_and_suppresses_duplicates():
    logits = torch.full((5, 3), -10.0)
    logits[:, 0] = 10.0  # background everywhere ...
    logits[0] = torch.tensor([0.0, 8.0, 0.0])  # ... except a class-1 box at default 0
    logits[4] = torch.tensor([0.0, 0.0, 6.0])  # and a class-2 box at default 4
    target = torch.tensor([[2.0, 3.0, 12.0, 9.0], [1.0, 1.0, 19.0, 19.0]])
    deltas = torch.zeros(5, 4)
    deltas[0] = mb.BOX_CODER.encode_single(target[:1], DEFAULTS[:1])[0]
    deltas[4] = mb.BOX_CODER.encode_single(target[1:], DEFAULTS[4:])[0]
    out = mb.decode_detections(logits, deltas, DEFAULTS, (20, 20), score_thresh=0.5)
    assert out["labels"].tolist() == [1, 2]
    torch.testing.assert_close(out["boxes"], target, atol=1e-4, rtol=0)
    assert out["labels"].dtype == torch.int64 and (out["scores"][:-1] >= out["scores"][1:]).all()
    # two near-identical class-1 boxes: NMS keeps the better one
    logits[1] = torch.tensor([0.0, 7.0, 0.0])
    deltas[1] = mb.BOX_CODER.encode_single(target[:1] + 0.5, DEFAULTS[1:2])[0]
    out = mb.decode_detections(logits, deltas, DEFAULTS, (20, 20), score_thresh=0.5)
    assert out["labels"].tolist() == [1, 2]
    assert out["scores"][0] == pytest.approx(logits[0].softmax(0)[1].item())
    kept = mb.decode_detections(logits, deltas, DEFAULTS, (20, 20), score_thresh=0.5, detections_per_img=1)
    assert len(kept["boxes"]) == 1
