"""Helpers of the issue-30 safety tests: run `mtl` in-process, one-line errors, tiny COCO-format data."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mtlcli.cli.main import main


def cli(args: list[Any]) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def flat(printed: str) -> str:
    """The printed text as one line, however the console wrapped it: a table cell wrapped onto two rows
    reads as one phrase (the cell borders are dropped)."""
    return " ".join(printed.replace("│", " ").replace("┃", " ").split())


def bomb_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A PNG whose header says width x height (a decompression bomb: 400 M pixels) with a tiny body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * (width + 1) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def grey16(path: Path, h: int = 24, w: int = 40) -> np.ndarray:
    """A 16-bit greyscale PNG of a ramp over the whole 0..65535 range; returns its values."""
    values = np.linspace(0, 65535, h * w).reshape(h, w).astype(np.uint16)
    Image.fromarray(values).save(path)
    return values


def exif_rotated(path: Path, h: int = 20, w: int = 40, orientation: int = 6, seed: int = 0) -> np.ndarray:
    """An image stored h x w whose EXIF orientation is `orientation`; returns the stored pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, exif=exif.tobytes(), **({"quality": 100} if path.suffix == ".jpg" else {}))
    return pixels


def coco_dataset(root: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    """A COCO-format annotation file at root/ann.json (images are written by the caller in root/img)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path
