"""Anchor shapes by k-means over box sizes with the 1 - IoU distance (YOLOv2), as the interdependent
multi-task network (papers/interdependent-mtl.txt §4.2) computes its nine anchors.

Boxes are compared by shape only: two boxes (w1, h1), (w2, h2) are placed on a common centre, so
IoU = min(w1, w2) min(h1, h2) / (w1 h1 + w2 h2 - min(w1, w2) min(h1, h2)). Sizes are in pixels of
whatever frame the caller chose (the network input frame for anchors).
"""

from __future__ import annotations

import numpy as np


def wh_iou(wh: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """IoU of centred boxes: wh [N, 2] and centers [K, 2] (width, height > 0) -> [N, K] in 0..1."""
    wh = np.asarray(wh, dtype=np.float64)[:, None, :]
    centers = np.asarray(centers, dtype=np.float64)[None, :, :]
    inter = np.minimum(wh[..., 0], centers[..., 0]) * np.minimum(wh[..., 1], centers[..., 1])
    union = wh[..., 0] * wh[..., 1] + centers[..., 0] * centers[..., 1] - inter
    return inter / union


def _init_plus_plus(wh: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding under d = 1 - IoU: each next centre drawn with probability ~ d(box, nearest)^2."""
    centers = [wh[rng.integers(len(wh))]]
    for _ in range(1, k):
        d = 1.0 - wh_iou(wh, np.array(centers)).max(axis=1)
        weights = d**2
        total = weights.sum()
        # all boxes coincide with a centre already (fewer distinct shapes than k): any box will do
        p = weights / total if total > 0 else None
        centers.append(wh[rng.choice(len(wh), p=p)])
    return np.array(centers, dtype=np.float64)


def kmeans_anchors(
    wh: np.ndarray, k: int = 9, *, seed: int = 0, iterations: int = 300, restarts: int = 5
) -> tuple[np.ndarray, float]:
    """Cluster box sizes into `k` anchors with the 1 - IoU distance.

    wh: [N, 2] widths and heights (> 0), N >= k. Lloyd iterations (assign each box to the centre of
    highest IoU, move each centre to the mean size of its boxes) from `restarts` k-means++ seedings;
    the run with the highest mean IoU between each box and its best anchor wins. An emptied cluster is
    moved to the box worst covered by the others. Deterministic for a given `seed`.
    Returns (anchors [k, 2] float64 sorted by area, smallest first; mean best IoU in 0..1).
    """
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if len(wh) < k:
        raise ValueError(f"k-means needs at least k = {k} boxes, got {len(wh)}")
    if not np.all(np.isfinite(wh)) or np.any(wh <= 0):
        raise ValueError("box widths and heights must be finite and positive")
    best: tuple[np.ndarray, float] | None = None
    for restart in range(max(restarts, 1)):
        rng = np.random.default_rng([seed, restart])
        centers = _init_plus_plus(wh, k, rng)
        assign = None
        for _ in range(iterations):
            iou = wh_iou(wh, centers)
            new_assign = iou.argmax(axis=1)
            if assign is not None and np.array_equal(new_assign, assign):
                break
            assign = new_assign
            for j in range(k):
                members = wh[assign == j]
                if len(members):
                    centers[j] = members.mean(axis=0)
                else:
                    centers[j] = wh[iou.max(axis=1).argmin()]
        score = float(wh_iou(wh, centers).max(axis=1).mean())
        if best is None or score > best[1]:
            best = (centers.copy(), score)
    assert best is not None  # at least one restart ran
    centers, score = best
    order = np.lexsort((centers[:, 0], centers[:, 0] * centers[:, 1]))
    return centers[order], score
