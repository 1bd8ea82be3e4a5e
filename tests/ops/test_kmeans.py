"""Anchor k-means with the 1 - IoU distance."""

from __future__ import annotations

import numpy as np
import pytest

from mtlcli.ops.kmeans import kmeans_anchors, wh_iou


def test_wh_iou_of_centred_boxes():
    iou = wh_iou(np.array([[10.0, 20.0], [4.0, 4.0]]), np.array([[10.0, 20.0], [20.0, 10.0], [2.0, 2.0]]))
    # (10x20 vs 20x10): overlap 10x10 = 100, union 200 + 200 - 100 = 300
    np.testing.assert_allclose(iou, [[1.0, 1 / 3, 4 / 200], [16 / 200, 16 / 200, 4 / 16]])


def clustered_boxes(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated shapes (tall pedestrian, square, wide car) with 5% jitter, unequal counts."""
    truth = np.array([[200.0, 100.0], [12.0, 30.0], [60.0, 60.0]])
    rng = np.random.default_rng(seed)
    parts = [c * rng.uniform(0.95, 1.05, size=(n, 2)) for c, n in zip(truth, (40, 70, 25), strict=True)]
    return np.concatenate(parts), truth


def test_known_clusters_are_found_and_sorted_by_area():
    wh, truth = clustered_boxes()
    anchors, mean_iou = kmeans_anchors(wh, k=3, seed=0)
    by_area = truth[np.argsort(truth.prod(1))]
    np.testing.assert_allclose(anchors, by_area, rtol=0.03)
    assert np.all(np.diff(anchors.prod(1)) > 0)
    assert mean_iou > 0.9


def test_nine_anchors_sorted_and_deterministic_for_a_seed():
    rng = np.random.default_rng(3)
    wh = np.exp(rng.normal(3.0, 1.0, size=(500, 2)))
    a1, s1 = kmeans_anchors(wh, k=9, seed=7)
    a2, s2 = kmeans_anchors(wh, k=9, seed=7)
    np.testing.assert_array_equal(a1, a2)
    assert s1 == s2
    assert a1.shape == (9, 2)
    assert np.all(np.diff(a1.prod(1)) >= 0)
    # more clusters cover the boxes at least as well as fewer
    assert s1 >= kmeans_anchors(wh, k=3, seed=7)[1]


def test_fewer_distinct_shapes_than_k_still_gives_k_anchors():
    wh = np.array([[10.0, 10.0]] * 6 + [[30.0, 15.0]] * 6)
    anchors, mean_iou = kmeans_anchors(wh, k=3, seed=0)
    assert anchors.shape == (3, 2)
    assert mean_iou == pytest.approx(1.0)


def test_bad_input():
    with pytest.raises(ValueError, match="at least k"):
        kmeans_anchors(np.ones((2, 2)), k=3)
    with pytest.raises(ValueError, match="positive"):
        kmeans_anchors(np.array([[1.0, 0.0]] * 4), k=2)
