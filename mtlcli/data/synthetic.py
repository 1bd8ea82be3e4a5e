"""A procedurally drawn street-scene dataset in the real Cityscapes layout (`mtl prepare synthetic`).

    SRC/leftImg8bit/<split>/<city>/<city>_<seq:06d>_000019_leftImg8bit.png     RGB uint8 [H, W, 3]
    SRC/gtFine/<split>/<city>/<city>_<seq:06d>_000019_gtFine_polygons.json     imgHeight, imgWidth, objects
    SRC/gtFine/<split>/<city>/<city>_<seq:06d>_000019_gtFine_labelIds.png      uint8 Cityscapes labelIds
    SRC/gtFine/<split>/<city>/<city>_<seq:06d>_000019_gtFine_instanceIds.png   uint16 (labelId * 1000 + k)
    SRC/gtFine/cityscapes_panoptic_<split>.json + cityscapes_panoptic_<split>/<id>_gtFine_panoptic.png
        the panoptic ground truth, written by cityscapesscripts' own createPanopticImgs exactly as for the
        real dataset (`panoptic=True`, the default; `mtlcli.data.cityscapes_panoptic`)
    SRC/mtl_synthetic.json                                                     the parameters, written last

Each scene is one street seen from a car: a horizon and a vanishing point, a road between two
sidewalks, building facades standing on the sidewalk edges and a distant skyline, sky above, trees and
poles with traffic signs at the roadside, and cars, trucks, buses, persons and cyclists (a rider drawn
over a bicycle) at sizes that follow the ground plane's perspective. Things are drawn far to near, so
near objects occlude far ones; a few distant clusters are annotated as groups ("cargroup",
"persongroup"), which become crowd regions. The label PNGs are rasterised from the polygons with
cityscapesscripts' own `createLabelImage` / `createInstanceImage` (`cityscapes.rasterise_polygons`),
i.e. they are exactly what the official tools make. The RGB image is drawn with the same polygons
(same rasteriser): flat class colours with mild per-instance variation, a few details (windows,
wheels, lane marks) and pixel noise.

Everything is deterministic for a seed: image i of a split uses `numpy.random.default_rng((seed,
split, i))`, so a tree with more images starts with the same images as a smaller one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mtlcli.data.cityscapes import rasterise_polygons
from mtlcli.data.cityscapes_panoptic import remove_panoptic, write_cityscapes_panoptic
from mtlcli.data.prepared import SYNTHETIC_MARKER, check_out_dir
from mtlcli.data.synthetic_shapes import (  # the shapes the scene places
    _bicycle,
    _box,
    _car_rear,
    _car_side,
    _person,
    _rider,
    _truck_side,
    clip_polygon,
    ellipse,
    rect,
)
from mtlcli.errors import UserError

CITIES = {
    "train": ["hanseburg", "kleinfeld", "mittelstadt", "neuhafen"],
    "val": ["oberdorf", "weissbach"],
}
FRAME = 19  # Cityscapes annotates the 20th frame of each snippet
MARKER = SYNTHETIC_MARKER  # "mtl_synthetic.json": parameters of a generated tree, written at its root

ROAD_HALF_WIDTH = 5.0  # metres; the road spans X in [-5, 5]
SIDEWALK_WIDTH = 4.0

Poly = list[tuple[float, float]]


# ---------------------------------------------------------------------------------------------------
# Geometry: a ground plane seen in perspective
# ---------------------------------------------------------------------------------------------------
class Street:
    """Perspective of one scene. A ground point at lateral position X metres (road centre 0) and depth
    scale s (1 at the image's bottom row, 0 at the horizon) appears at image pixel
    (x, y) = (vx + s * (x_bottom(X) - vx), horizon + s * (H - horizon)); an object standing there is
    `s * ppm` pixels per metre tall and wide."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.horizon = height * rng.uniform(0.36, 0.44)
        self.vx = width * rng.uniform(0.42, 0.58)
        left = width * rng.uniform(-0.12, 0.08)
        right = width * rng.uniform(0.92, 1.12)
        self.ppm = (right - left) / (2 * ROAD_HALF_WIDTH)  # pixels per metre at s = 1
        self.left = left  # x of the road's left edge at the bottom row

    def x(self, lateral: float, s: float) -> float:
        bottom = self.left + (lateral + ROAD_HALF_WIDTH) * self.ppm
        return self.vx + s * (bottom - self.vx)

    def y(self, s: float) -> float:
        return self.horizon + s * (self.h - self.horizon)

    def ground(self, lateral: float, s: float) -> tuple[float, float]:
        return self.x(lateral, s), self.y(s)

    def s_at_x(self, lateral: float, x: float) -> float:
        """Depth scale where the ground line at `lateral` crosses image column x."""
        bottom = self.left + (lateral + ROAD_HALF_WIDTH) * self.ppm
        return (x - self.vx) / (bottom - self.vx)


# ---------------------------------------------------------------------------------------------------
# Colours (RGB image only): flat per class, mild per-instance variation
# ---------------------------------------------------------------------------------------------------
BASE_COLOURS = {
    "road": [(82, 80, 86)],
    "sidewalk": [(178, 160, 172)],
    "building": [(150, 128, 108), (128, 120, 118), (168, 150, 120)],
    "vegetation": [(62, 112, 44), (80, 120, 40)],
    "pole": [(112, 112, 118)],
    "traffic sign": [(232, 196, 30), (38, 78, 196), (206, 34, 34)],
    "car": [(36, 58, 150), (30, 34, 46), (170, 172, 180), (36, 96, 140)],
    "truck": [(236, 236, 230), (232, 120, 24)],
    "bus": [(236, 180, 36), (222, 196, 40)],
    "person": [(60, 40, 90), (36, 36, 60), (92, 36, 60)],
    "rider": [(236, 96, 36), (226, 60, 40)],
    "bicycle": [(24, 24, 26)],
    "ego vehicle": [(20, 20, 24)],
}
SKIN = (220, 176, 140)


def _colour(rng: np.random.Generator, label: str, spread: int = 12) -> tuple[int, int, int]:
    options = BASE_COLOURS[label.removesuffix("group")]
    base = np.array(options[rng.integers(len(options))])
    r, g, b = (int(v) for v in np.clip(base + rng.integers(-spread, spread + 1, size=3), 0, 255))
    return r, g, b


def _shade(c: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    r, g, b = (int(min(255, max(0, v * f))) for v in c)
    return r, g, b


# ---------------------------------------------------------------------------------------------------
# The scene
# ---------------------------------------------------------------------------------------------------
class Canvas:
    """Collects Cityscapes polygon objects in drawing order and paints the RGB image alongside."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.rng, self.h, self.w = rng, height, width
        # sky: a vertical gradient, lighter towards the horizon
        t = np.linspace(0.0, 1.0, height)[:, None]
        top, low = np.array([96, 146, 206]), np.array([186, 208, 232])
        sky = (top * (1 - t) + low * t)[:, None, :].repeat(width, axis=1)
        self.image = Image.fromarray(sky.reshape(height, width, 3).astype(np.uint8), "RGB")
        self.draw = ImageDraw.Draw(self.image)
        self.objects: list[dict[str, Any]] = []

    def add(
        self,
        label: str,
        poly: Poly,
        colour: tuple[int, int, int] | None = None,
        details: Sequence[tuple[Poly, tuple[int, int, int]]] = (),
    ) -> bool:
        """Add one annotated polygon (pixel coordinates, may reach outside the image) and paint it;
        details are painted inside it on the RGB image only. False when it lies outside the image."""
        clipped = clip_polygon(poly, self.w, self.h)
        if not clipped:
            return False
        self.objects.append({"label": label, "polygon": clipped})
        if colour is None:
            colour = _colour(self.rng, label)
        self.draw.polygon([tuple(p) for p in clipped], fill=colour)
        for detail, c in details:
            self.draw.polygon(detail, fill=c)
        return True

    def annotation(self) -> dict[str, Any]:
        return {"imgHeight": self.h, "imgWidth": self.w, "objects": self.objects}

    def rgb(self, noise: float = 4.0) -> np.ndarray:
        arr = np.asarray(self.image).astype(np.int16)
        arr += self.rng.normal(0.0, noise, size=arr.shape).astype(np.int16)
        return np.clip(arr, 0, 255).astype(np.uint8)


def _placed(street: Street, lateral: float, s: float, shape: Poly) -> Poly:
    """Shape in metres (u right, v up from the ground contact point) -> image pixels at (lateral, s)."""
    gx, gy = street.ground(lateral, s)
    k = s * street.ppm
    return [(gx + u * k, gy - v * k) for u, v in shape]


def _bbox(poly: Poly) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    return min(xs), min(ys), max(xs), max(ys)


def _too_hidden(box, boxes, limit: float = 0.55) -> bool:
    """True when `box` would cover or be covered by an earlier box by more than `limit` of its area,
    which keeps occlusion partial."""
    x0, y0, x1, y1 = box
    area = max((x1 - x0) * (y1 - y0), 1e-6)
    for a0, b0, a1, b1 in boxes:
        iw, ih = min(x1, a1) - max(x0, a0), min(y1, b1) - max(y0, b0)
        if iw > 0 and ih > 0:
            inter = iw * ih
            if inter / area > limit or inter / max((a1 - a0) * (b1 - b0), 1e-6) > limit:
                return True
    return False


def _background(c: Canvas, st: Street) -> float:
    """Sky, road, sidewalks, skyline and facades. Returns the depth scale where the street ends."""
    rng = c.rng
    # the sky polygon covers the frame; everything else is drawn over it (the RGB canvas starts as sky)
    c.objects.append({"label": "sky", "polygon": [[0, 0], [c.w - 1, 0], [c.w - 1, c.h - 1], [0, c.h - 1]]})
    far = rng.uniform(0.07, 0.12)
    road = [
        st.ground(-ROAD_HALF_WIDTH, 0),
        st.ground(ROAD_HALF_WIDTH, 0),
        st.ground(ROAD_HALF_WIDTH, 1.4),
        st.ground(-ROAD_HALF_WIDTH, 1.4),
    ]
    marks = []  # dashed centre line, RGB only: dashes evenly spaced in depth (1 / s)
    d = 1.0 / far
    while d > 0.6:
        s0, s1 = 1.0 / d, 1.0 / max(d - 0.35, 0.5)
        marks.append(
            ([st.ground(-0.08, s0), st.ground(0.08, s0), st.ground(0.08, s1), st.ground(-0.08, s1)], (210, 210, 200))
        )
        d -= 0.9
    c.add("road", road, details=marks)
    outer = ROAD_HALF_WIDTH + SIDEWALK_WIDTH
    for a, b in ((-outer, -ROAD_HALF_WIDTH), (ROAD_HALF_WIDTH, outer)):
        c.add("sidewalk", [st.ground(a, 0), st.ground(b, 0), st.ground(b, 1.4), st.ground(a, 1.4)])

    # distant skyline across the end of the street
    xl, xr, base = st.x(-outer, far), st.x(outer, far), st.y(far)
    x = xl - 2
    while x < xr:
        bw = far * st.ppm * rng.uniform(6, 16)
        top = base - far * st.ppm * rng.uniform(8, 30)
        c.add("building", rect(x, top, x + bw + 1, base))
        x += bw

    # facades standing on the outer sidewalk edges, split into buildings along the depth 1 / s
    for side in (-1, 1):
        lateral = side * outer
        edge = 0 if side < 0 else c.w - 1
        near = min(st.s_at_x(lateral, edge) * 1.15, 1.5)
        d, d_end = 1.0 / far, 1.0 / near
        while d > d_end:
            d_next = max(d - rng.uniform(1.0, 3.0), d_end * 0.9)
            sa, sb = 1.0 / d, 1.0 / d_next
            height = rng.uniform(9, 24)
            quad = [
                (st.x(lateral, sa), st.y(sa)),
                (st.x(lateral, sb), st.y(sb)),
                (st.x(lateral, sb), st.y(sb) - sb * st.ppm * height),
                (st.x(lateral, sa), st.y(sa) - sa * st.ppm * height),
            ]
            colour = _colour(rng, "building", 18)
            windows = []
            for floor in range(int(height // 3.2)):
                v0, v1 = floor * 3.2 + 1.2, floor * 3.2 + 2.4
                dd = d - 0.25
                while dd - 0.35 > d_next:
                    w0, w1 = 1.0 / dd, 1.0 / (dd - 0.35)
                    windows.append(
                        (
                            [
                                (st.x(lateral, w0), st.y(w0) - w0 * st.ppm * v0),
                                (st.x(lateral, w1), st.y(w1) - w1 * st.ppm * v0),
                                (st.x(lateral, w1), st.y(w1) - w1 * st.ppm * v1),
                                (st.x(lateral, w0), st.y(w0) - w0 * st.ppm * v1),
                            ],
                            _shade(colour, 0.55),
                        )
                    )
                    dd -= 0.7
            c.add("building", quad, colour=colour, details=windows)
            d = d_next
    return far


Part = tuple[str, Poly, tuple[int, int, int], list[tuple[Poly, tuple[int, int, int]]]]

VEHICLES = {  # label -> (rear width, side length, height) in metres, slightly larger than life
    "car": (2.0, 4.5, 1.6),
    "truck": (2.6, 7.5, 3.4),
    "bus": (2.7, 11.0, 3.3),
}


def _vehicle(rng: np.random.Generator, st: Street, label: str, lateral: float, s: float) -> list[Part]:
    width, length, height = VEHICLES[label]
    colour = _colour(rng, label)
    dark, glass = (22, 22, 24), _shade(colour, 0.45)
    lights: list[Poly] = []
    if rng.random() < 0.4:  # seen from the side (crossing), else from behind
        shape = {"car": _car_side, "truck": _truck_side, "bus": _box}[label](length, height)
        r = 0.42 if label == "car" else 0.5
        wheels = [ellipse(u, r, r, r, 10) for u in (-0.3 * length, 0.3 * length)]
        if label == "car":
            windows = [
                [
                    (-0.27 * length, 0.62 * height),
                    (0.16 * length, 0.63 * height),
                    (0.06 * length, 0.93 * height),
                    (-0.25 * length, 0.93 * height),
                ]
            ]
        elif label == "truck":
            windows = [rect(0.34 * length, 0.74 * height, 0.42 * length, 0.66 * height)]
        else:
            windows = [
                rect(u, 0.82 * height, u + 0.11 * length, 0.5 * height) for u in np.arange(-0.46, 0.4, 0.13) * length
            ]
    else:
        shape = (_car_rear if label == "car" else _box)(width, height)
        wheels = [rect(-0.48 * width, 0.25, -0.3 * width, 0.0), rect(0.3 * width, 0.25, 0.48 * width, 0.0)]
        top = 0.92 * height
        windows = [rect(-0.34 * width, top, 0.34 * width, 0.62 * height if label == "car" else 0.7 * height)]
        lights = [
            rect(-0.45 * width, 0.5 * height, -0.33 * width, 0.42 * height),
            rect(0.33 * width, 0.5 * height, 0.45 * width, 0.42 * height),
        ]
    details = [(_placed(st, lateral, s, w), glass) for w in windows]
    details += [(_placed(st, lateral, s, w), (200, 30, 30)) for w in lights]
    details += [(_placed(st, lateral, s, w), dark) for w in wheels]
    return [(label, _placed(st, lateral, s, shape), colour, details)]


def _pedestrian(rng: np.random.Generator, st: Street, lateral: float, s: float) -> list[Part]:
    h = 1.95 * rng.uniform(0.92, 1.06)
    shape = _person(h)
    head = rect(-0.05 * h, 0.99 * h, 0.05 * h, 0.86 * h)
    return [("person", _placed(st, lateral, s, shape), _colour(rng, "person"), [(_placed(st, lateral, s, head), SKIN)])]


def _cyclist(rng: np.random.Generator, st: Street, lateral: float, s: float, ridden: bool) -> list[Part]:
    length = 1.9 * rng.uniform(0.95, 1.05)
    flip = -1.0 if rng.random() < 0.5 else 1.0  # riding left or right
    bike = [(flip * u, v) for u, v in _bicycle(length)]
    parts: list[Part] = [("bicycle", _placed(st, lateral, s, bike), _colour(rng, "bicycle"), [])]
    if ridden:
        body = [(flip * u, v) for u, v in _rider(length)]
        k = length / 1.9
        head = [(flip * u, v) for u, v in rect(-0.02 * k, 1.74 * k, 0.12 * k, 1.55 * k)]
        parts.append(("rider", _placed(st, lateral, s, body), _colour(rng, "rider"), []))
        parts[-1][3].append((_placed(st, lateral, s, head), SKIN))
    return parts


def _tree(rng: np.random.Generator, st: Street, lateral: float, s: float) -> list[Part]:
    trunk = rect(-0.25, 3.2, 0.25, 0.0)
    crown = ellipse(0.0, 5.2, 2.3 * rng.uniform(0.85, 1.15), 2.1 * rng.uniform(0.85, 1.15), 14, rng, 0.1)
    green = _colour(rng, "vegetation", 14)
    return [
        ("vegetation", _placed(st, lateral, s, trunk), (92, 72, 52), []),
        ("vegetation", _placed(st, lateral, s, crown), green, []),
    ]


def _pole(rng: np.random.Generator, st: Street, lateral: float, s: float) -> list[Part]:
    pole = rect(-0.18, 4.3, 0.18, 0.0)
    kind = rng.integers(3)
    if kind == 0:
        sign = rect(-0.5, 4.6, 0.5, 3.6)
    elif kind == 1:
        sign = [(-0.55, 4.6), (0.55, 4.6), (0.0, 3.6)]
    else:
        sign = ellipse(0.0, 4.1, 0.5, 0.5, 8)
    return [
        ("pole", _placed(st, lateral, s, pole), _colour(rng, "pole", 8), []),
        ("traffic sign", _placed(st, lateral, s, sign), _colour(rng, "traffic sign", 10), []),
    ]


def _group(rng: np.random.Generator, st: Street, label: str, lateral: float, s: float) -> list[Part]:
    """A cluster too dense to split into instances: one polygon labelled "<class>group"."""
    n = int(rng.integers(3, 6))
    if label == "car":
        w, h, step = 2.0, 1.6, 1.5
        outline: Poly = [(-w / 2, 0), ((n - 1) * step + w / 2, 0)]
        for j in reversed(range(n)):
            u = j * step
            outline += [(u + w / 2, 0.55 * h), (u + 0.38 * w, h), (u - 0.38 * w, h)]
            if j:
                outline.append((u - 0.62 * w, 0.6 * h))
        outline.append((-w / 2, 0.55 * h))
        seams = [rect(j * step - w / 2 - 0.05, 0.5 * h, j * step - w / 2 + 0.05, 0.05) for j in range(1, n)]
        details = [(_placed(st, lateral, s, q), (20, 20, 24)) for q in seams]
        colour = _colour(rng, "car")
    else:
        h, step = 1.9, 0.45
        outline = [(-0.3, 0), ((n - 1) * step + 0.3, 0)]
        for j in reversed(range(n)):
            u = j * step
            outline += [
                (u + 0.3, 0.78 * h),
                (u + 0.1, 0.86 * h),
                (u + 0.08, h),
                (u - 0.08, h),
                (u - 0.1, 0.86 * h),
                (u - 0.22, 0.8 * h),
            ]
        details = [
            (_placed(st, lateral, s, rect(j * step - 0.07, 0.98 * h, j * step + 0.07, 0.87 * h)), SKIN)
            for j in range(n)
        ]
        colour = _colour(rng, "person")
    return [(label + "group", _placed(st, lateral, s, outline), colour, details)]


def draw_scene(rng: np.random.Generator, height: int, width: int) -> tuple[dict[str, Any], np.ndarray]:
    """One street scene: (Cityscapes polygon annotation dict, RGB uint8 [H, W, 3])."""
    st = Street(rng, height, width)
    c = Canvas(rng, height, width)
    _background(c, st)

    things: list[tuple[float, list[Part]]] = []  # (depth scale, parts) drawn far to near
    for _ in range(int(rng.integers(0, 5))):
        side = rng.choice([-1, 1])
        s = rng.uniform(0.12, 0.85)
        things.append((s, _tree(rng, st, side * rng.uniform(7.0, 8.5), s)))
    for _ in range(int(rng.integers(1, 4))):
        s = rng.uniform(0.3, 0.95)
        things.append((s, _pole(rng, st, rng.choice([-1, 1]) * rng.uniform(5.4, 6.0), s)))
    if rng.random() < 0.35:
        s = rng.uniform(0.14, 0.24)
        things.append((s, _group(rng, st, "car", rng.choice([-1, 1]) * 4.2 - 2.5, s)))
    if rng.random() < 0.35:
        s = rng.uniform(0.18, 0.3)
        things.append((s, _group(rng, st, "person", rng.choice([-1, 1]) * 7.0 - 0.9, s)))

    boxes: list[tuple[float, float, float, float]] = []
    wanted = (
        ["car"] * int(rng.integers(2, 7))
        + ["truck"] * int(rng.random() < 0.35)
        + ["bus"] * int(rng.random() < 0.3)
        + ["person"] * int(rng.integers(1, 6))
        + ["cyclist"] * int(rng.integers(0, 3))
        + ["bicycle"] * int(rng.random() < 0.3)
    )
    for kind in wanted:
        for _ in range(20):  # a few tries to find a spot that is not hidden behind another object
            if kind in VEHICLES:
                s = rng.uniform(0.18, 0.95 if kind == "car" else 0.7)
                lateral = rng.uniform(-3.6, 3.6) if rng.random() < 0.7 else rng.choice([-1, 1]) * rng.uniform(3.8, 4.3)
                parts = _vehicle(rng, st, kind, lateral, s)
            elif kind == "person":
                s = rng.uniform(0.3, 1.0)
                lateral = rng.choice([-1, 1]) * rng.uniform(5.5, 8.5) if rng.random() < 0.8 else rng.uniform(-4, 4)
                parts = _pedestrian(rng, st, lateral, s)
            else:
                s = rng.uniform(0.3, 0.95)
                lateral = (
                    rng.choice([-1, 1]) * rng.uniform(3.0, 4.6)
                    if rng.random() < 0.7
                    else rng.choice([-1, 1]) * rng.uniform(5.5, 8.0)
                )
                parts = _cyclist(rng, st, lateral, s, ridden=kind == "cyclist")
            box = _bbox([p for part in parts for p in part[1]])
            if box[2] < 0 or box[0] > width - 1 or box[3] > height * 1.02 or _too_hidden(box, boxes):
                continue
            boxes.append(box)
            things.append((s, parts))
            break

    for _, parts in sorted(things, key=lambda t: t[0]):
        for label, poly, colour, details in parts:
            c.add(label, poly, colour, details)
    if rng.random() < 0.5:  # the bonnet of the recording car, as in Cityscapes ("ego vehicle", ignored)
        top = height * rng.uniform(0.92, 0.95)
        hood = (
            [(0, height), (0, top + 0.04 * height)]
            + [(width * t, top + 0.04 * height * (2 * t - 1) ** 2) for t in np.linspace(0.1, 0.9, 9)]
            + [(width, top + 0.04 * height), (width, height)]
        )
        c.add("ego vehicle", hood)
    return c.annotation(), c.rgb()


def image_name(split: str, index: int) -> tuple[str, str]:
    """(city, Cityscapes file prefix `<city>_<seq:06d>_<frame:06d>`) of image `index` of a split;
    images are dealt round-robin over the split's cities."""
    cities = CITIES.get(split, [f"{split}town"])
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{FRAME:06d}"


def write_image(root: Path, split: str, index: int, seed: int, size: tuple[int, int]) -> None:
    """Draw image `index` of `split` and write its four Cityscapes files under `root`."""
    split_code = {"train": 0, "val": 1}.get(split, 2)
    rng = np.random.default_rng((seed, split_code, index))
    annotation, rgb = draw_scene(rng, *size)
    label_ids, instance_ids = rasterise_polygons(annotation)
    city, prefix = image_name(split, index)
    img_dir = root / "leftImg8bit" / split / city
    gt_dir = root / "gtFine" / split / city
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    # low compression: the noisy RGB barely compresses and level 1 is several times faster
    from mtlcli.safety import atomic_save_image, atomic_write_text

    atomic_save_image(img_dir / f"{prefix}_leftImg8bit.png", Image.fromarray(rgb, "RGB"), compress_level=1)
    atomic_write_text(gt_dir / f"{prefix}_gtFine_polygons.json", json.dumps(annotation, indent=1))
    atomic_save_image(gt_dir / f"{prefix}_gtFine_labelIds.png", label_ids)
    atomic_save_image(gt_dir / f"{prefix}_gtFine_instanceIds.png", instance_ids)


def _write_job(args: tuple[Path, str, int, int, tuple[int, int]]) -> None:
    write_image(*args)


def generate_synthetic(
    out: str | Path,
    *,
    train: int = 300,
    val: int = 60,
    size: tuple[int, int] = (256, 512),
    seed: int = 0,
    force: bool = False,
    workers: int | None = 1,
    quiet: bool = False,
    panoptic: bool = True,
) -> Path:
    """Write a synthetic street-scene dataset in the Cityscapes layout (module docstring) to `out`.

    size is (H, W) in pixels. `out` must be empty or absent unless force. Returns the resolved root,
    which `prepare_cityscapes` reads like the real dataset. Deterministic for (seed, size). panoptic: also
    write Cityscapes' panoptic ground truth (createPanopticImgs' files) of the drawn splits.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mtlcli.data.prepared import atomic_write_text, default_workers

    height, width = (int(v) for v in size)
    if train < 0 or val < 0 or train + val == 0:
        raise UserError(f"--train {train} --val {val}: ask for at least one image and no negative counts")
    if height < 32 or width < 64:
        raise UserError(f"--size {height} {width} is too small for a street scene; use at least 32 64 (H W)")
    if height > 4096 or width > 8192:
        raise UserError(f"--size {height} {width} is larger than 4096 8192; Cityscapes itself is 1024 2048")
    root = check_out_dir(out, force, writes="source")  # never into a prepared dataset or a run
    (root / MARKER).unlink(missing_ok=True)  # a tree being redrawn is no complete city until the end
    jobs = [(root, split, i, seed, (height, width)) for split, n in (("train", train), ("val", val)) for i in range(n)]
    workers = workers or default_workers()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    drawn = [split for split, n in (("train", train), ("val", val)) if n]
    with Progress(*columns, disable=quiet) as progress:
        task = progress.add_task("[bold]synthetic[/] city", total=len(jobs))
        if workers > 1 and len(jobs) > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(_write_job, jobs, chunksize=4):
                    progress.advance(task)
        else:
            for job in jobs:
                _write_job(job)
                progress.advance(task)
        for split in ("train", "val"):  # a city drawn again (--force) keeps no panoptic files of the old one
            if not panoptic or split not in drawn:
                remove_panoptic(root / "gtFine", split)
        if panoptic:  # createPanopticImgs' own files, one split at a time (its printing swallowed)
            task = progress.add_task("panoptic splits", total=len(drawn))
            for split in drawn:
                write_cityscapes_panoptic(root, [split])
                progress.advance(task)
    params = {
        "generator": "mtl synthetic city",
        "version": 1,
        "seed": seed,
        "train": train,
        "val": val,
        "size": [height, width],
        "panoptic": panoptic,
    }
    atomic_write_text(root / MARKER, json.dumps(params, indent=2))
    return root
