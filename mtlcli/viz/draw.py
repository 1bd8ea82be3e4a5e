"""Drawing helpers shared by every `mtl viz` command: ground truth and predictions are drawn alike.

All functions take and return images as uint8 tensors [3, H, W] (RGB, 0..255) in the image's own pixel
frame; boxes are xyxy floats in that frame. Drawing goes through torchvision.utils
(`draw_segmentation_masks`, `draw_bounding_boxes`), colours through a dataset's palette or matplotlib
colour maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

IGNORE_INDEX = 255
CROWD_COLOR = (160, 160, 160)
MIN_HEIGHT = 256  # overlays of smaller images are enlarged so that captions, titles and legends stay readable


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """An image [3, H, W] as uint8: floats are taken as 0..1 (clamped), uint8 passes through."""
    image = image.detach().cpu().as_subclass(torch.Tensor)
    if image.dtype == torch.uint8:
        return image
    return (image.float().clamp(0, 1) * 255).round().to(torch.uint8)


def class_colors(n: int, cmap: str = "tab20") -> list[tuple[int, int, int]]:
    """n distinct RGB colours from a matplotlib qualitative colour map (cycled past its length).

    tab20 holds ten hues, each dark then light: its dark shades come first, so that neighbouring classes
    (person and rider, car and truck) never share a hue while there are nine classes or fewer, and its two greys
    (14, 15) come last: grey marks crowd regions (CROWD_COLOR)."""
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    steps = getattr(cm, "N", 256)
    if cmap == "tab20":
        hues = [i for i in range(0, steps, 2) if i != 14]
        order = [*hues, *(i + 1 for i in hues), 14, 15]
    else:
        order = list(range(steps))
    return [tuple(int(round(255 * c)) for c in cm(order[i % steps])[:3]) for i in range(n)]  # type: ignore[misc]


def colorize_semantic(
    semantic: torch.Tensor,
    palette: Sequence[Sequence[int]],
    ignore_index: int = IGNORE_INDEX,
    ignore_color: Sequence[int] = (0, 0, 0),
) -> torch.Tensor:
    """Class map [H, W] (int, 0..C-1, `ignore_index` = unlabelled) -> uint8 [3, H, W] palette colours.

    Values outside the palette (other than the ignore index) get the ignore colour as well.
    """
    lut = torch.tensor(list(ignore_color) * 256, dtype=torch.uint8).view(256, 3)
    if len(palette):
        lut[: min(len(palette), 256)] = torch.tensor([list(c) for c in palette[:256]], dtype=torch.uint8)
    lut[ignore_index] = torch.tensor(list(ignore_color), dtype=torch.uint8)
    sem = semantic.as_subclass(torch.Tensor).long()
    sem = torch.where((sem < 0) | (sem > 255), ignore_index, sem)
    return lut[sem].permute(2, 0, 1).contiguous()


def overlay_semantic(
    image: torch.Tensor,
    semantic: torch.Tensor,
    palette: Sequence[Sequence[int]],
    alpha: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Blend the palette colour of each labelled pixel over `image` (uint8 [3, H, W]); ignored pixels
    and classes beyond the palette keep the image."""
    image = to_uint8(image)
    sem = semantic.as_subclass(torch.Tensor)
    present = [int(c) for c in torch.unique(sem) if int(c) != ignore_index and 0 <= int(c) < len(palette)]
    if not present:
        return image
    masks = torch.stack([sem == c for c in present])
    return draw_segmentation_masks(image, masks, alpha=alpha, colors=[tuple(palette[c]) for c in present])


def overlay_masks(
    image: torch.Tensor,
    masks: torch.Tensor,
    colors: Sequence[Sequence[int]] | None = None,
    alpha: float = 0.5,
    threshold: float = 0.5,
) -> torch.Tensor:
    """Blend instance masks [N, H, W] (bool/uint8, or float scores cut at `threshold`) over `image`."""
    image = to_uint8(image)
    masks = masks.as_subclass(torch.Tensor)
    if masks.ndim == 4:  # [N, 1, H, W] as models return them
        masks = masks[:, 0]
    if masks.shape[0] == 0:
        return image
    masks = masks > threshold if masks.is_floating_point() else masks.bool()
    colors = [tuple(c) for c in colors] if colors is not None else class_colors(masks.shape[0])
    return draw_segmentation_masks(image, masks, alpha=alpha, colors=colors)


def colorize_dt(dt: torch.Tensor, num_bins: int, cmap: str = "viridis") -> torch.Tensor:
    """Distance-transform bins [H, W] (0 = background .. num_bins) -> uint8 [3, H, W]; bin 0 is black,
    bins 1..num_bins run along `cmap` from the object boundary to its centre."""
    dt = dt.as_subclass(torch.Tensor).long()
    return colorize_semantic(torch.where(dt > 0, dt - 1, IGNORE_INDEX), dt_palette(num_bins, cmap))


def dt_palette(num_bins: int, cmap: str = "viridis") -> list[tuple[int, int, int]]:
    """Colours of DT bins 1..num_bins (index 0 = bin 1)."""
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    stops = np.linspace(0.25, 1.0, max(num_bins, 1))
    return [tuple(int(round(255 * c)) for c in cm(s)[:3]) for s in stops]  # type: ignore[misc]


def overlay_dt(image: torch.Tensor, dt: torch.Tensor, num_bins: int, alpha: float = 0.6) -> torch.Tensor:
    """Blend DT bins 1..num_bins over `image`; background (bin 0) keeps the image."""
    return overlay_semantic(
        image, dt.as_subclass(torch.Tensor).long() - 1, dt_palette(num_bins), alpha=alpha, ignore_index=-1
    )


@lru_cache(maxsize=1)
def _font_path() -> str | None:
    """A TrueType font that scales with the image (matplotlib ships DejaVu Sans); None = PIL's bitmap."""
    try:
        from matplotlib import font_manager

        return font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    except Exception:  # no usable font: PIL's small built-in one still works
        return None


def draw_boxes(
    image: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    class_names: Sequence[str],
    scores: torch.Tensor | Sequence[float] | None = None,
    iscrowd: torch.Tensor | Sequence[int] | None = None,
    colors: Sequence[Sequence[int]] | None = None,
    width: int | None = None,
    font_size: int | None = None,
) -> torch.Tensor:
    """Draw boxes [N, 4] (xyxy, pixels of `image`) with "name" or "name 0.87" captions.

    labels are 1..K indices into `class_names` (0 or out of range prints "class <k>"); colours are one per
    class (default: `class_colors(K)`), crowd boxes (iscrowd = 1) are grey and captioned "name (crowd)".
    Line width and font size default to the image size so that captions stay readable.
    """
    image = to_uint8(image)
    boxes = torch.as_tensor(
        boxes.as_subclass(torch.Tensor) if isinstance(boxes, torch.Tensor) else boxes, dtype=torch.float32
    ).reshape(-1, 4)
    if boxes.shape[0] == 0:
        return image
    h, w = image.shape[-2:]
    labels = [int(v) for v in labels]
    crowd = [int(v) for v in iscrowd] if iscrowd is not None else [0] * len(labels)
    palette = [tuple(c) for c in colors] if colors is not None else class_colors(max(len(class_names), 1))
    captions, box_colors = [], []
    for k, (label, is_crowd) in enumerate(zip(labels, crowd, strict=True)):
        name = class_names[label - 1] if 1 <= label <= len(class_names) else f"class {label}"
        if scores is not None:
            name = f"{name} {float(scores[k]):.2f}"
        captions.append(f"{name} (crowd)" if is_crowd else name)
        box_colors.append(CROWD_COLOR if is_crowd else palette[(label - 1) % len(palette)])
    # boxes must be ordered and inside the canvas for PIL
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h - 1)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2])
    short = min(h, w)
    image = draw_bounding_boxes(image, boxes, colors=box_colors, width=width or max(1, short // 200 + 1))
    order = (
        sorted(range(len(captions)), key=lambda k: -float(scores[k]))
        if scores is not None
        else sorted(
            range(len(captions)), key=lambda k: -float((boxes[k, 2] - boxes[k, 0]) * (boxes[k, 3] - boxes[k, 1]))
        )
    )
    return place_captions(image, boxes, captions, box_colors, order, font_size or max(12, short // 40))


def draw_prediction(
    image: torch.Tensor,
    semantic: torch.Tensor | None,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    masks: torch.Tensor | None,
    det_classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    alpha: float = 0.5,
    scale: int = 1,
) -> torch.Tensor:
    """One prediction panel, uint8 [3, scale H, scale W], for an image [3, H, W] and what the model kept for
    it in the same pixel frame: the class map [H, W] (or None) in `palette` blended with `alpha`, instance
    masks [N, H, W] (bool, or None) in their class colours, boxes [N, 4] xyxy with "name score" captions
    that do not hide each other. `scale` enlarges a small image first (nearest neighbour) so that the
    captions are drawn at a readable size over it."""
    panel = enlarge(to_uint8(image), scale)
    if semantic is not None:
        panel = overlay_semantic(panel, enlarge(semantic.as_subclass(torch.Tensor), scale), palette, alpha=alpha)
    if len(boxes):
        colors = class_colors(max(len(det_classes), 1))
        if masks is not None and len(masks):
            panel = overlay_masks(
                panel,
                enlarge(masks.as_subclass(torch.Tensor), scale),
                colors=[colors[(int(k) - 1) % len(colors)] for k in labels],
                alpha=alpha,
            )
        panel = draw_boxes(panel, boxes.as_subclass(torch.Tensor).float() * scale, labels, det_classes, scores=scores)
    return panel


def prediction_title(score_threshold: float | None) -> str:
    """The title of a prediction panel: "prediction (score ≥ T)" for a model that detects (the boxes drawn
    are those scoring at least T), "prediction" (None) for one that does not."""
    return "prediction" if score_threshold is None else f"prediction (score ≥ {score_threshold:g})"


def place_captions(
    image: torch.Tensor,
    boxes: torch.Tensor,
    captions: Sequence[str],
    colors: Sequence[Sequence[int]],
    order: Sequence[int],
    font_size: int,
) -> torch.Tensor:
    """Caption boxes without hiding one caption under another: in `order` (most important first) each
    caption goes above its box, else inside its top edge, else below it; one that would overlap a placed
    caption in all three places is dropped (the box stays). Filled caption backgrounds in the box colour."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(to_uint8(image).permute(1, 2, 0).numpy())
    pen = ImageDraw.Draw(canvas)
    fnt = font(font_size)
    widths = [pen.textlength(text, font=fnt) + 4 for text in captions]
    slots = caption_slots(boxes, widths, order, canvas.height, canvas.width, font_size + 3)
    for k, rect in slots.items():
        color = tuple(int(c) for c in colors[k])
        pen.rectangle(rect, fill=color)
        pen.text((rect[0] + 2, rect[1] + 1), captions[k], fill=_text_color(color), font=fnt)
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).contiguous()


def caption_slots(
    boxes: torch.Tensor, widths: Sequence[float], order: Sequence[int], h: int, w: int, th: int
) -> dict[int, tuple[float, float, float, float]]:
    """Where each caption goes (x0, y0, x1, y1), by box index; captions that find no free place are absent.
    Tried in `order`: above the box, inside its top edge, below it; inside the picture, no overlaps."""
    placed: dict[int, tuple[float, float, float, float]] = {}

    def free(r: tuple[float, float, float, float]) -> bool:
        return all(r[2] <= q[0] or q[2] <= r[0] or r[3] <= q[1] or q[3] <= r[1] for q in placed.values())

    for k in order:
        tw = widths[k]
        x1, y1, _, y2 = (float(v) for v in boxes[k])
        x = min(max(0.0, x1), max(0.0, w - tw))
        for y in (y1 - th, y1, y2):
            rect = (x, y, x + tw, y + th)
            if y >= 0 and y + th <= h and free(rect):
                placed[k] = rect
                break
    return placed


def _text_color(background: Sequence[int]) -> tuple[int, int, int]:
    """Black on light caption backgrounds, white on dark ones (Rec. 601 luma)."""
    r, g, b = background[:3]
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def side_by_side(panels: Sequence[torch.Tensor]) -> torch.Tensor:
    """uint8 images [3, H, W_i] of equal height -> one [3, H, sum W_i]."""
    return torch.cat([to_uint8(p) for p in panels], dim=-1)


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """Write a uint8 [3, H, W] (or float 0..1) image as a PNG, creating the folder; returns the path."""
    from mtlcli.safety import atomic_save_image

    path = Path(path)
    atomic_save_image(path, to_uint8(image).permute(1, 2, 0).contiguous().numpy())  # never half a PNG
    return path


def font(size: int):
    """A PIL font of `size` pixels: DejaVu Sans (from matplotlib) when found, else PIL's default one."""
    from PIL import ImageFont

    path = _font_path()
    if path:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    return ImageFont.load_default(size=size)


def titled_row(
    panels: Sequence[torch.Tensor],
    titles: Sequence[str],
    caption: str | None = None,
    min_height: int = 192,
    gap: int = 4,
) -> torch.Tensor:
    """Panels [3, H, W_i] side by side, each under its title, with optional caption lines ("\n") below.

    Panels lower than `min_height` are enlarged by an integer factor (nearest neighbour, so pixels stay
    visible); the font is at least 13 px and grows with the panel height. A title wraps onto a second
    line where the panel is narrow; the canvas widens (panels centred) so that one-panel titles and the
    caption lines fit. White background, `gap` pixels between panels. Returns uint8 [3, H', W'].
    """
    import textwrap

    from PIL import Image, ImageDraw

    if len(panels) != len(titles):
        raise ValueError("one title per panel")
    panels = [to_uint8(p) for p in panels]
    h = max(int(p.shape[-2]) for p in panels)
    factor, line_h = titled_geometry(h, min_height)
    scaled = [enlarge(p, factor) for p in panels]
    h *= factor
    size = font_size_for(h)
    fnt = font(size)
    pen = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = caption.split("\n") if caption else []
    panels_w = sum(int(p.shape[-1]) for p in scaled) + gap * (len(scaled) - 1)
    need = [pen.textlength(t, font=fnt) + 8 for t in lines]
    if len(scaled) == 1:
        need.append(pen.textlength(titles[0], font=fnt) + 8)
    width = int(max([panels_w] + need))
    wrapped = []
    for panel, title in zip(scaled, titles, strict=True):
        room = max(int(panel.shape[-1]), width if len(scaled) == 1 else 0) - 4
        chars = max(4, int(room / max(pen.textlength("n", font=fnt), 1)))
        fits = pen.textlength(title, font=fnt) <= room
        parts = [title] if fits else (textwrap.wrap(title, chars)[:2] or [""])
        wrapped.append([_fit(pen, t, fnt, room) for t in parts])
    band = line_h * max(len(w) for w in wrapped)
    canvas = Image.new("RGB", (width, band + h + line_h * len(lines)), (255, 255, 255))
    pen = ImageDraw.Draw(canvas)
    x = (width - panels_w) // 2
    for panel, title_lines in zip(scaled, wrapped, strict=True):
        pw = int(panel.shape[-1])
        canvas.paste(Image.fromarray(panel.permute(1, 2, 0).numpy()), (x, band))
        for i, text in enumerate(title_lines):
            tw = pen.textlength(text, font=fnt)
            pen.text((x + (pw - tw) / 2, i * line_h + (line_h - size) / 2), text, fill=(0, 0, 0), font=fnt)
        x += pw + gap
    for i, line in enumerate(lines):
        pen.text(
            (4, band + h + i * line_h + (line_h - size) / 2), _fit(pen, line, fnt, width - 8), fill=(0, 0, 0), font=fnt
        )
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).contiguous()


def font_size_for(height: int) -> int:
    """The caption font size of a picture `height` pixels high: 13..28 px."""
    return max(13, min(28, int(height) // 14))


def titled_geometry(height: int, min_height: int = 192) -> tuple[int, int]:
    """(enlargement factor, height of one title line) that `titled_row` uses for panels `height` high."""
    factor = enlarge_factor(height, min_height)
    return factor, int(font_size_for(height * factor) * 1.7)


def _fit(pen, text: str, fnt, width: float) -> str:
    """`text`, shortened with an ellipsis until it fits `width` pixels."""
    if pen.textlength(text, font=fnt) <= width:
        return text
    while len(text) > 1 and pen.textlength(text + "…", font=fnt) > width:
        text = text[:-1]
    return text + "…"


def enlarge(t: torch.Tensor, scale: int) -> torch.Tensor:
    """Nearest-neighbour enlargement of the last two dimensions by an integer factor (pixels stay visible)."""
    return t.repeat_interleave(scale, -2).repeat_interleave(scale, -1) if scale > 1 else t


def enlarge_factor(height: int, min_height: int) -> int:
    """The integer factor that brings `height` to at least `min_height` (1 when it is already there)."""
    return max(1, -(-min_height // max(int(height), 1)))


def legend(entries: Sequence[tuple[str, Sequence[int], bool]], width: int, font_size: int = 13) -> torch.Tensor:
    """A colour legend as uint8 [3, H, width]: one swatch + name per entry (filled square for a
    segmentation class, hollow square for a box class when the flag is False), wrapped into rows."""
    from PIL import Image, ImageDraw

    fnt = font(font_size)
    pen = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    sw, pad, line_h = font_size, 6, int(font_size * 1.6)
    rows: list[list[tuple[float, tuple[str, Sequence[int], bool]]]] = [[]]
    x: float = pad
    for entry in entries:
        need = sw + 4 + pen.textlength(entry[0], font=fnt) + 2 * pad
        if rows[-1] and x + need > width:
            rows.append([])
            x = pad
        rows[-1].append((x, entry))
        x += need
    canvas = Image.new("RGB", (width, line_h * len(rows) + 4), (255, 255, 255))
    pen = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y = 2 + r * line_h + (line_h - sw) / 2
        for x, (name, color, filled) in row:
            c = tuple(int(v) for v in color)
            if filled:
                pen.rectangle((x, y, x + sw, y + sw), fill=c, outline=(0, 0, 0))
            else:
                pen.rectangle((x, y, x + sw, y + sw), outline=c, width=3)
            pen.text((x + sw + 4, y - 1), name, fill=(0, 0, 0), font=fnt)
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).contiguous()


def stack(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """uint8 images [3, H_i, W_i] one under the other, padded with white to the widest."""
    width = max(int(r.shape[-1]) for r in rows)
    padded = [torch.nn.functional.pad(to_uint8(r), (0, width - int(r.shape[-1])), value=255) for r in rows]
    return torch.cat(padded, dim=1)


def legend_entries(
    semantic_maps: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    seg_classes: Sequence[str],
    det_classes: Sequence[str],
    palette: Sequence[Sequence[int]],
) -> list[tuple[str, Sequence[int], bool]]:
    """The classes present in the drawn class maps (filled swatches, palette colours) and boxes (hollow
    swatches, box colours), each once, in class order."""
    seg = sorted(
        {int(c) for m in semantic_maps for c in torch.unique(torch.as_tensor(m)) if 0 <= int(c) < len(palette)}
    )
    det = sorted({int(k) for ls in labels for k in torch.as_tensor(ls).flatten().tolist()})
    colors = class_colors(max(len(det_classes), 1))
    entries: list[tuple[str, Sequence[int], bool]] = [
        (seg_classes[c] if c < len(seg_classes) else f"class {c}", palette[c], True) for c in seg
    ]
    entries += [
        (
            f"{det_classes[k - 1] if 1 <= k <= len(det_classes) else f'class {k}'} (box)",
            colors[(k - 1) % len(colors)],
            False,
        )
        for k in det
    ]
    return entries


def titled_picture(
    panels: Sequence[torch.Tensor],
    titles: Sequence[str],
    entries: Sequence[tuple[str, Sequence[int], bool]],
    caption: str | None = None,
) -> torch.Tensor:
    """The layout of every overlay PNG: `titled_row` of the panels (drawn at a readable size: `enlarge` an
    image lower than MIN_HEIGHT before drawing on it), then the `legend` of `entries` in the titles' font
    size (no legend without entries). uint8 [3, H', W']."""
    row = titled_row(panels, titles, caption, min_height=MIN_HEIGHT)
    return with_legend([row], entries, max(int(p.shape[-2]) for p in panels))


def with_legend(
    rows: Sequence[torch.Tensor], entries: Sequence[tuple[str, Sequence[int], bool]], panel_height: int
) -> torch.Tensor:
    """`titled_row` rows of panels `panel_height` high (before `enlarge`), stacked, with the `legend` of
    `entries` below in the titles' font size (none without entries). uint8 [3, H', W']."""
    if not entries:
        return stack(rows)
    size = font_size_for(panel_height * enlarge_factor(panel_height, MIN_HEIGHT))
    return stack([*rows, legend(entries, max(int(r.shape[-1]) for r in rows), size)])
