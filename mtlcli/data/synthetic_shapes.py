"""The synthetic city's shapes: polygons in metres relative to the ground contact point (u right, v up),
scaled and placed by the caller (`mtlcli.data.synthetic`), and the clip of a placed polygon to the image."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Poly = list[tuple[float, float]]


def ellipse(
    cx: float, cy: float, rx: float, ry: float, n: int = 16, rng: np.random.Generator | None = None, jitter: float = 0.0
) -> Poly:
    pts = []
    for k in range(n):
        a = 2 * math.pi * k / n
        r = 1.0 + (rng.uniform(-jitter, jitter) if rng is not None and jitter else 0.0)
        pts.append((cx + rx * r * math.cos(a), cy + ry * r * math.sin(a)))
    return pts


def rect(x0: float, y0: float, x1: float, y1: float) -> Poly:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def clip_polygon(poly: Poly, width: int, height: int) -> list[list[int]]:
    """Sutherland-Hodgman clip of a polygon to the image rectangle, rounded to integer pixel
    coordinates (Cityscapes polygons are integer); [] when nothing is left."""

    def clip(points: Poly, inside: Callable[[tuple[float, float]], bool], cut) -> Poly:
        out: Poly = []
        for i, cur in enumerate(points):
            prev = points[i - 1]
            if inside(cur):
                if not inside(prev):
                    out.append(cut(prev, cur))
                out.append(cur)
            elif inside(prev):
                out.append(cut(prev, cur))
        return out

    def at_x(x0: float):
        return lambda p, q: (x0, p[1] + (q[1] - p[1]) * (x0 - p[0]) / (q[0] - p[0]))

    def at_y(y0: float):
        return lambda p, q: (p[0] + (q[0] - p[0]) * (y0 - p[1]) / (q[1] - p[1]), y0)

    xmax, ymax = width - 1, height - 1
    pts = list(poly)
    for inside, cut in (
        (lambda p: p[0] >= 0, at_x(0)),
        (lambda p: p[0] <= xmax, at_x(xmax)),
        (lambda p: p[1] >= 0, at_y(0)),
        (lambda p: p[1] <= ymax, at_y(ymax)),
    ):
        if not pts:
            return []
        pts = clip(pts, inside, cut)
    out: list[list[int]] = []
    for x, y in pts:
        p = [int(round(x)), int(round(y))]
        if not out or out[-1] != p:
            out.append(p)
    if len(out) > 1 and out[0] == out[-1]:
        out.pop()
    return out if len(out) >= 3 else []


# ---------------------------------------------------------------------------------------------------
# Object shapes, in metres relative to the ground contact point (u right, v up), scaled by the caller
# ---------------------------------------------------------------------------------------------------
def _car_rear(w: float, h: float) -> Poly:
    return [(-w / 2, 0), (w / 2, 0), (w / 2, 0.55 * h), (0.38 * w, h), (-0.38 * w, h), (-w / 2, 0.55 * h)]


def _car_side(length: float, h: float) -> Poly:
    L = length
    return [
        (-L / 2, 0.0),
        (L / 2, 0.0),
        (L / 2, 0.5 * h),
        (0.42 * L, 0.58 * h),
        (0.2 * L, 0.6 * h),
        (0.08 * L, h),
        (-0.3 * L, h),
        (-0.42 * L, 0.62 * h),
        (-L / 2, 0.55 * h),
    ]


def _truck_side(length: float, h: float) -> Poly:
    L = length
    return [
        (-L / 2, 0.0),
        (L / 2, 0.0),
        (L / 2, 0.62 * h),
        (0.45 * L, 0.7 * h),
        (0.36 * L, 0.7 * h),
        (0.3 * L, 0.72 * h),
        (0.3 * L, h),
        (-L / 2, h),
    ]


def _box(w: float, h: float) -> Poly:
    return [(-w / 2, 0), (w / 2, 0), (w / 2, h), (-w / 2, h)]


def _person(h: float) -> Poly:
    """A standing person facing the camera, width about 0.3 h (slightly wider than life)."""
    return [
        (-0.13 * h, 0),
        (-0.02 * h, 0),
        (0, 0.42 * h),
        (0.02 * h, 0),
        (0.13 * h, 0),
        (0.12 * h, 0.45 * h),
        (0.17 * h, 0.5 * h),
        (0.16 * h, 0.78 * h),
        (0.07 * h, 0.84 * h),
        (0.07 * h, 0.9 * h),
        (0.04 * h, h),
        (-0.04 * h, h),
        (-0.07 * h, 0.9 * h),
        (-0.07 * h, 0.84 * h),
        (-0.16 * h, 0.78 * h),
        (-0.17 * h, 0.5 * h),
        (-0.12 * h, 0.45 * h),
    ]


def _bicycle(length: float) -> Poly:
    """Side view: the outline of two wheels joined by the frame, wheel radius about 0.2 length."""
    r = 0.2 * length
    rear, front = -length / 2 + r, length / 2 - r
    pts: Poly = []
    for k in range(7):  # lower half of the rear wheel, left to right
        a = math.pi + math.pi * k / 6
        pts.append((rear + r * math.cos(a), r + r * math.sin(a)))
    pts.append((0, 0.6 * r))
    for k in range(7):
        a = math.pi + math.pi * k / 6
        pts.append((front + r * math.cos(a), r + r * math.sin(a)))
    pts += [(front + 0.3 * r, 2.3 * r), (front - 0.2 * r, 2.5 * r), (rear + 0.9 * r, 2.4 * r), (rear, 2 * r)]
    return pts


def _rider(length: float) -> Poly:
    """A person pedalling a bicycle of the given length (side view, riding to the right), about 1.8 m
    from the ground to the top of the head; the legs overlap the frame."""
    k = length / 1.9
    pts = [
        (-0.35, 0.85),
        (-0.05, 0.45),
        (0.0, 0.3),
        (0.15, 0.3),
        (0.1, 0.5),
        (0.25, 0.8),
        (-0.05, 0.95),
        (0.45, 1.0),
        (0.5, 1.1),
        (0.15, 1.35),
        (0.12, 1.5),
        (0.18, 1.58),
        (0.12, 1.78),
        (-0.02, 1.8),
        (-0.08, 1.6),
        (-0.02, 1.45),
        (-0.2, 1.35),
        (-0.4, 1.0),
    ]
    return [(k * u, k * v) for u, v in pts]
