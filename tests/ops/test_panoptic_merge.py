"""The panoptic merge (Panoptic FPN's rules) and the box-only thing masks, on hand-placed inputs."""

from __future__ import annotations

import pytest
import torch

from mtlcli.ops.panoptic import det_to_seg, merge_panoptic, thing_indices

SEG = ["road", "sky", "person", "car"]
DET = ["person", "car"]


def _merge(semantic, boxes, scores, labels, masks, **kw):
    return merge_panoptic(
        semantic,
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(scores, dtype=torch.float32),
        torch.tensor(labels, dtype=torch.int64),
        masks,
        label_to_class=det_to_seg(DET, SEG),
        thing_classes=thing_indices(SEG, DET),
        **kw,
    )


def test_things_by_score_then_stuff_with_a_minimum_area():
    semantic = torch.zeros((10, 10), dtype=torch.int64)  # road
    semantic[:3] = 1  # sky, 30 px
    semantic[0, 0] = 3  # a car pixel no instance covers: void
    masks = torch.zeros((3, 10, 10), dtype=torch.bool)
    masks[0, 1:8, 0:4] = True  # person, score 0.6, 28 px
    masks[1, 5:8, 0:4] = True  # car, score 0.9, under the person: taken first
    masks[2, 8:10, 8:10] = True  # car below the score threshold
    ids, segs = _merge(semantic, [[0, 0, 1, 1]] * 3, [0.6, 0.9, 0.4], [1, 2, 2], masks, stuff_area=31)
    # the car first; the person keeps its 16 free pixels (12 of 28 taken: 0.43 <= 0.5); road 50 px; sky
    # (21 free px) is under stuff_area; the car pixel no instance covers stays void
    assert [(s["class"], s["isthing"]) for s in segs] == [(3, True), (2, True), (0, False)]
    assert [s["area"] for s in segs] == [12, 16, 50] and segs[0]["score"] == pytest.approx(0.9)
    assert ids[0, 0] == 0 and (ids[0, 4:] == 0).all() and int((ids == 0).sum()) == 22
    masks[0, 1:8, 0:4], masks[0, 4:8, 0:4] = False, True  # a person 12 of 16 under the car: dropped
    _, segs = _merge(semantic, [[0, 0, 1, 1]] * 3, [0.6, 0.9, 0.4], [1, 2, 2], masks, stuff_area=31)
    assert [s["class"] for s in segs] == [3, 0]


def test_overlap_threshold_drops_a_hidden_instance():
    semantic = torch.zeros((8, 8), dtype=torch.int64)
    masks = torch.zeros((2, 8, 8), dtype=torch.bool)
    masks[0, 0:4, 0:4] = True
    masks[1, 0:4, 0:3] = True  # wholly under the first
    ids, segs = _merge(semantic, [[0, 0, 4, 4]] * 2, [0.9, 0.8], [1, 1], masks, stuff_area=1)
    assert [s["isthing"] for s in segs] == [True, False]
    _, segs = _merge(semantic, [[0, 0, 4, 4]] * 2, [0.9, 0.8], [1, 1], masks, stuff_area=1, overlap_threshold=1.0)
    assert [s["isthing"] for s in segs] == [True, True, False] and segs[1]["area"] == 0


def test_box_only_things_are_the_semantic_pixels_of_their_class_in_the_box():
    semantic = torch.zeros((10, 10), dtype=torch.int64)
    semantic[2:6, 2:6] = 2  # person pixels
    semantic[2:6, 8:10] = 2  # more person pixels outside the box
    ids, segs = _merge(semantic, [[1.5, 1.5, 6.2, 7.0]], [0.8], [1], None, stuff_area=1)
    assert segs[0]["inferred"] is True and segs[0]["area"] == 16
    assert (ids[2:6, 8:10] == 0).all()  # the person class outside the box is no segment (a thing class)
    assert segs[1]["class"] == 0 and segs[1]["area"] == 100 - 16 - 8
