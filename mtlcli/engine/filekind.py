"""What a file given where a PyTorch checkpoint or state dict is expected really is, read from its first bytes
(never unpickled), so that a wrong file gets one line naming it instead of torch's `weights_only` text."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

# what torch.load(weights_only=True) raises on a file that is not a checkpoint: it fails in many ways
NOT_A_PICKLE: tuple[type[BaseException], ...] = (
    RuntimeError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    EOFError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
)
INSTEAD = "give a training checkpoint (RUN/checkpoints/best.pt) or the run directory (--run RUN)"


def foreign_kind(path: str | Path) -> str | None:
    """None for a file that may be what `torch.save` writes (a zip archive of a pickle, or a legacy pickle);
    else what it is instead, with what runs it: "a TorchScript export (...)", "an ONNX model (...)",
    "a JSON file", "an empty file", "a text file", "a file of unknown content (...)"."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None  # the caller's own reading reports it
    if not head:
        return "an empty file"
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "a damaged zip archive (a checkpoint cut short?)"
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "a TorchScript export (`mtl export --format torchscript`; it runs with torch.jit.load)"
        return None
    if head[:1] == b"\x80":  # pickle protocol 2+: a legacy torch.save file
        return None
    if path.suffix.lower() == ".onnx" or (head[:1] == b"\x08" and (b"pytorch" in head or b"onnx" in head)):
        return "an ONNX model (`mtl export --format onnx`; it runs with onnxruntime)"
    text = head.lstrip()
    if text[:1] in (b"{", b"["):
        try:
            json.loads(path.read_text())
            return "a JSON file"
        except (ValueError, UnicodeDecodeError, OSError):
            pass
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end of the bytes read
            return "a file of unknown content (neither a zip archive nor a pickle)"
    return "a text file"
