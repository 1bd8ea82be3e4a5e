"""Is an image file whole? Checked at prepare time, so that a damaged file is skipped with its reason.

`check_image(path, verify=False)` returns (width, height) or raises OSError naming what is wrong:
- by default cheaply, without decoding pixels: the header must parse (Pillow), and the end of the
  stream must be there — a PNG's closing IEND chunk, a JPEG's end-of-image marker (FF D9) — within
  the last 4 KiB (some tools append bytes after it). A download or copy cut short fails this;
- with `verify=True` (`mtl prepare ... --verify`) the whole file is decoded as well (and a PNG's chunk
  checksums are verified), which also finds damage inside a complete file, at the cost of a decode
  per image.
Formats other than PNG and JPEG are always decoded in full.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

# the PNG chunk check lives with the one image reader (mtlcli.data.images), which uses it first;
# re-exported here for the other readers
from mtlcli.data.images import PNG_SIGNATURE, open_image, png_chunks_intact

__all__ = ["PNG_SIGNATURE", "check_image", "mark_verify", "png_chunks_intact"]

PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk (type + CRC) that closes every complete PNG
JPEG_END = b"\xff\xd9"  # end-of-image marker
TAIL = 4096  # bytes read at the end of a file, tolerating what some tools append after the end marker


def check_image(path: str | Path, verify: bool = False) -> tuple[int, int]:
    """(width, height) of a complete image file; OSError (or Pillow's ValueError / SyntaxError) if not."""
    path = Path(path)
    with open_image(path) as img:  # decompression bombs: one line, as everywhere
        size, fmt = img.size, img.format
        if verify or fmt not in ("PNG", "JPEG", "MPO"):
            if fmt == "PNG":
                img.verify()  # chunk CRCs; verify() leaves the image unusable: decode from a fresh open
            else:
                img.load()
    if verify and fmt == "PNG":
        with open_image(path) as img:
            img.load()
    if fmt in ("PNG", "JPEG", "MPO"):
        end = PNG_END if fmt == "PNG" else JPEG_END
        with open(path, "rb") as f:
            f.seek(max(f.seek(0, 2) - TAIL, 0))
            if end not in f.read():
                marker = "IEND chunk" if fmt == "PNG" else "end-of-image marker"
                raise OSError(f"{path.name} is truncated (no {marker} at its end)")
    return size


def mark_verify(jobs: Iterable[Any], verify: bool) -> None:
    """Ask every ImageJob's per-image function for a full decode (payload["verify"]) when `verify`."""
    if verify:
        for job in jobs:
            job.payload["verify"] = True
