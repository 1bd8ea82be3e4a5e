"""The one image reader of mtl: `mtl prepare`, `mtl predict`, the prepared-dataset reader, the Python API
and `mtl viz` read pixels (and image sizes) here and nowhere else, so that they all see the same picture.

One rule for every reader (docs/safety.md):

- **EXIF orientation is applied**, as Detectron2's `read_image` does: a phone JPEG whose EXIF says
  "rotate 90°" (orientation 6) is read upright, and the size `mtl prepare` records in instances.json
  (and `mtl predict` in images.json) is the upright size. Annotations of such an image are taken to be
  in its upright pixels (inferred: COCO's own images carry no orientation tag, and tools that draw
  boxes on photos show them upright).
- **Bit depth**: every image becomes 8-bit RGB. 16-bit greyscale (PNG/TIFF, PIL modes ``I;16*`` and
  ``I``) keeps its high byte (v >> 8, what torchvision's `to_dtype(..., scale=True)` does), instead of
  PIL's `convert("RGB")`, which clips every value above 255 to white; 48-bit RGB is reduced by the
  decoder the same way; palette, grey+alpha, RGBA and CMYK images are converted by PIL (alpha dropped).
  32-bit float greyscale (mode ``F``) is taken as 0..255 values, as PIL converts it.
- **Decompression bombs**: an image of more than `MAX_PIXELS` pixels (its header says so) is refused
  before it is decoded, with one line naming the file.

A file that cannot be read raises `ImageError` (a ValueError: the prepare and predict loops skip the
file and list the reason; the dataset reader and the API turn it into one UserError line).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

# PIL refuses more than twice its MAX_IMAGE_PIXELS (89.5 M) itself, with a DecompressionBombError that is
# neither an OSError nor a ValueError; refused here first, as an ImageError naming the file.
MAX_PIXELS = 178_956_970

# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse)
_SWAPPING = (5, 6, 7, 8)
_ORIENTATION_TAG = 0x0112


class ImageError(ValueError):
    """An image that mtl will not read: the message names the file and says why."""


def open_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Any:
    """PIL.Image.open with the decompression-bomb check turned into an ImageError; the caller closes the
    image. Every reader of image pixels or headers in mtl opens files through it."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as exc:
        import re

        count = re.search(r"\((\d+) pixels\)", str(exc))  # PIL: "Image size (400000000 pixels) exceeds ..."
        raise ImageError(_bomb_text(path, int(count.group(1)) if count else None, max_pixels)) from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ImageError(_bomb_text(path, (w, h), max_pixels))
    return img


def _bomb_text(path: Any, size: tuple[int, int] | int | None, max_pixels: int) -> str:
    if isinstance(size, tuple):
        dims = f"{size[0]}x{size[1]} pixels"
    else:
        dims = f"{size:,} pixels" if size else "too many pixels"
    return (
        f"{path}: {dims}, more than the {max_pixels:,} mtl reads (a decompression bomb or a scan far larger "
        "than a model's input) — downscale it first"
    )


def orientation(img: Any) -> int:
    """The EXIF orientation (1..8) of an open PIL image; 1 where none is given."""
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a damaged EXIF block: PIL raises many kinds; read the image unrotated
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def pil_to_rgb(img: Any) -> np.ndarray:
    """An open PIL image -> uint8 [H, W, 3], EXIF orientation applied and deep images scaled (module rules)."""
    from PIL import ImageOps

    img.load()  # decode first: a PNG's EXIF sits after its pixels, and looking for it first hides damage in them
    if orientation(img) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16") or img.mode == "I":
        deep = np.asarray(img).astype(np.int64)
        grey = (np.clip(deep, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


def read_rgb(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The image file `path` as uint8 [H, W, 3] RGB, upright (module rules). ImageError when it cannot be
    read; a missing file is an ImageError too."""
    try:
        img = open_image(path, max_pixels)
        with img:
            return np.ascontiguousarray(pil_to_rgb(img))
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # missing, truncated or not an image
        raise ImageError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None


def read_rgb_tensor(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """`read_rgb` as a uint8 tensor [3, H, W]."""
    return torch.from_numpy(read_rgb(path, max_pixels=max_pixels).copy()).permute(2, 0, 1).contiguous()


def decode_rgb_tensor(data: torch.Tensor, path: str | Path, *, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """The encoded file `data` (uint8 bytes, as `torchvision.io.read_file` gives) as uint8 [3, H, W].

    libjpeg-turbo / libpng through torchvision.io where they apply the module's rules (EXIF orientation
    applied, 16 bits keep the high byte, like `read_rgb`), else `read_rgb` on `path`; the training data
    path's fast reader."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        if int(data[0]) == 0x89 and not png_chunks_intact(data):  # libpng would crash the process
            raise RuntimeError("damaged PNG")
        image = decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except (RuntimeError, OSError, ValueError, IndexError):
        return read_rgb_tensor(path, max_pixels=max_pixels)
    if image.shape[-1] * image.shape[-2] > max_pixels:
        raise ImageError(_bomb_text(path, (image.shape[-1], image.shape[-2]), max_pixels))
    if image.dtype == torch.uint16:  # 16-bit PNG: the high byte
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    elif image.dtype != torch.uint8:
        return read_rgb_tensor(path, max_pixels=max_pixels)
    return image


def _has_chunk(path: str | Path, name: bytes) -> bool:
    import mmap

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return data.find(name) >= 0


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunks_intact(data: Any) -> bool:
    """Every chunk of a PNG byte buffer (bytes, or a uint8 tensor/array through the buffer protocol) has
    its length inside the file and a matching CRC, up to IEND.

    torchvision 0.29's libpng decoder crashes the whole process (a segmentation fault, not an exception)
    on some damaged streams — a complete file with zeroed bytes inside an IDAT chunk is one — so the
    readers call this before handing a PNG to it and let PIL, which raises, read the rest. zlib's CRC
    runs at over 1 GB/s: about 2 ms for a 1024x2048 image, against ~50 ms to decode it.
    """
    import zlib

    view = memoryview(data.numpy() if hasattr(data, "numpy") else data).cast("B")
    n = len(view)
    if n < 8 or bytes(view[:8]) != PNG_SIGNATURE:
        return False
    pos = 8
    while pos + 12 <= n:
        length = int.from_bytes(view[pos : pos + 4], "big")
        end = pos + 8 + length
        if end + 4 > n:
            return False
        if zlib.crc32(view[pos + 4 : end]) != int.from_bytes(view[end : end + 4], "big"):
            return False
        if bytes(view[pos + 4 : pos + 8]) == b"IEND":
            return True
        pos = end + 4
    return False


def image_size(path: str | Path, verify: bool = False, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(height, width) of the image file `path` as mtl reads it (upright: EXIF orientations 5-8 swap the
    sides), from its header; `verify` decodes the pixels as well (damage inside a complete file).
    ImageError when it cannot be read or is larger than `max_pixels`."""
    try:
        img = open_image(path, max_pixels)
        with img:
            w, h = img.size
            if verify:
                img.load()
            # a PNG's EXIF may follow its pixels: PIL would decode them all to look; a byte search is cheaper
            exif_later = img.format == "PNG" and "exif" not in img.info and not verify
            turned = (orientation(img) if not exif_later or _has_chunk(path, b"eXIf") else 1) in _SWAPPING
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    return (w, h) if turned else (h, w)
