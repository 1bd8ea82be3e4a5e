"""Where commands may write, and how: the guards that keep prepared data and runs from being lost.

- `refuse_protected_output(path)`: every command that writes files a user names (eval
  --save-predictions / --out, viz --out, benchmark / anchors --out, predict, export, ...) calls it
  first. Nothing but `mtl prepare` writes inside a prepared dataset (a folder whose `dataset.json`
  is mtl's), and nothing but `mtl train` writes inside a run's `checkpoints/` — not even with
  --force, because an overlay or a prediction written over ground truth makes the next evaluation
  silently wrong.
- `atomic_write_bytes` / `atomic_write_text` / `atomic_save`: a temporary file in the target's
  folder, fsynced, given the permissions the user's umask asks for, then renamed over the target
  (and the folder fsynced), so a crash or a full disk never leaves a truncated file behind and a
  written file is not `-rw-------` where the user expects `-rw-r--r--`.
- `atomic_path(path)`: the same for writers that take a file name (ONNX / TorchScript exports, videos,
  JSON lines written frame by frame): a `with` block gets a temporary name beside `path`, which is
  renamed over it only when the block ends without an error. `atomic_save_image` (PNG and every other
  PIL format) and `atomic_save_figure` (matplotlib) are the one way mtl writes pictures.
- `write_error_line(exc)`: the one line for an `OSError` (read-only file system, disk full, name too
  long, not a directory, ...) that `mtl` prints before exiting with status 2.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from mtlcli.errors import UserError

# Temporary files of `atomic_*`: ".<name>.<random>.tmp" beside the target (cleaned by `clean_orphans`).
TMP_SUFFIX = ".tmp"


# ------------------------------------------------------------------------------------ protected places


def _is_prepared_dataset(folder: Path) -> bool:
    """A folder whose dataset.json is mtl's DatasetMeta (not any file that happens to be called so)."""
    meta = folder / "dataset.json"
    try:
        if not meta.is_file():
            return False
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"det_classes", "seg_classes", "splits"} <= set(data)


def _is_run_checkpoints(folder: Path) -> bool:
    """RUN/checkpoints of an `mtl train` run (beside recipe.toml, or holding last.pt / best.pt)."""
    if folder.name != "checkpoints":
        return False
    try:
        return (
            (folder.parent / "recipe.toml").is_file()
            or (folder / "last.pt").is_file()
            or (folder / "best.pt").is_file()
        )
    except OSError:  # a name too long, ...: not a run; the write itself reports it
        return False


def protected_owner(path: str | Path) -> tuple[str, Path] | None:
    """("prepared dataset" | "run checkpoints", the protected folder) when `path` (after resolving
    symlinks, the folder itself or anything below it) lies inside one; None elsewhere."""
    resolved = Path(path).expanduser().resolve()
    for folder in (resolved, *resolved.parents):
        if _is_prepared_dataset(folder):
            return "prepared dataset", folder
        if _is_run_checkpoints(folder):
            return "run checkpoints", folder
    return None


def refuse_protected_output(path: str | Path, option: str = "--out") -> None:
    """Raise UserError when a command would write `path` inside a prepared dataset or a run's checkpoints/.

    Call it in every command that writes files at a place the user chooses, before anything is
    written, whatever --force says: `mtl prepare` alone writes a prepared dataset and `mtl train`
    alone a run's checkpoints/. `path` may be a folder (the command writes below it) or a file;
    symlinks are resolved before comparing, so a link into the dataset is refused too. `option` names
    the flag in the message (e.g. "--save-predictions").
    """
    owner = protected_owner(path)
    if owner is None:
        return
    kind, folder = owner
    who = "`mtl prepare`" if kind == "prepared dataset" else "`mtl train`"
    raise UserError(
        f"{option} {path} lies inside the {kind} {folder}, which only {who} writes (it would overwrite the "
        f"files results are measured against, even with --force) — choose a folder outside it"
    )


# ------------------------------------------------------------------------------------------ writing


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform / file system opens folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` atomically: `write(f)` fills a temporary file in the same folder, which is flushed,
    fsynced, given mode 0o666 & ~umask (what `open` would give) and renamed over `path`. On any error
    the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise named_write_error(exc, path) from None
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    def write(f: IO[bytes]) -> None:
        f.write(data)

    atomic_save(path, write)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def named_write_error(exc: BaseException, path: Path) -> BaseException:
    """An OSError of a write (a full disk raises ENOSPC without a file name) names the file it was
    writing, so that its one line says which; anything else is returned as it is."""
    if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
        return type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))
    if isinstance(exc, OSError) and exc.filename is not None and TMP_SUFFIX in str(exc.filename):
        return type(exc)(exc.errno, exc.strerror, str(path)) if exc.errno is not None else exc
    return exc


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """`with atomic_path(out) as tmp:` write the file `tmp` (a temporary name ".NAME.XXXX.tmp" in the
    folder of `out`) by any means; when the block ends without an error `tmp` is fsynced, given mode
    0o666 & ~umask and renamed over `out` (the folder fsynced). On an error, or if the process is killed,
    `out` keeps what it held before and `tmp` is removed (or left for `clean_orphans`) — a file is
    never half-written under its final name. Writers that guess a format from the name (PIL, PyAV,
    matplotlib) must be told the format. A writer that removes `tmp` leaves `out` untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if not tmp.exists():  # the writer removed it: it chose to write nothing, `path` stays as it was
            return
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        raise named_write_error(exc, path) from None
    _fsync_dir(path.parent)


def _pil_format(path: Path) -> str:
    from PIL import Image

    return Image.registered_extensions().get(path.suffix.lower(), "PNG")


def atomic_save_image(path: str | Path, image: Any, **save_kwargs: Any) -> None:
    """Write a PIL image (or a uint8 / uint16 numpy array, HxW or HxWx3) atomically, in the format its
    suffix names (PNG when unknown); `save_kwargs` go to `PIL.Image.save` (compress_level, bits, ...)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    path = Path(path)
    atomic_save(path, lambda f: image.save(f, format=_pil_format(path), **save_kwargs))


def atomic_save_figure(path: str | Path, fig: Any, **savefig_kwargs: Any) -> None:
    """Write a matplotlib figure atomically, in the format its suffix names (`savefig`'s own rule)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    atomic_save(path, lambda f: fig.savefig(f, format=fmt, **savefig_kwargs))


def clean_orphans(folder: str | Path, pattern: str = f".*{TMP_SUFFIX}") -> list[Path]:
    """Remove temporary files a killed write left in `folder` (not below it); returns what went.
    Call it only while no other process writes there (e.g. holding the run lock)."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in folder.glob(pattern):
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


# ------------------------------------------------------------------------------------------ messages

_ERRNO_HINTS = {
    errno.EROFS: "read-only file system — choose a location you can write to",
    errno.ENOSPC: "no space left on the device — free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded — free some space or write elsewhere",
    errno.ENAMETOOLONG: "file name too long — choose a shorter name",
    errno.ENOTDIR: "a part of this path is a file, not a folder — check the path",
    errno.EISDIR: "is a folder where a file was expected — give a file path",
    errno.EEXIST: "already exists — choose another name",
    errno.ENOTEMPTY: "folder is not empty — choose another folder",
    errno.EACCES: "permission denied — choose a location you can write to",
    errno.EPERM: "operation not permitted — choose a location you can write to",
    errno.ELOOP: "too many levels of symbolic links — check the path",
    errno.EMFILE: "too many open files — raise `ulimit -n` or use fewer workers",
    errno.EIO: "input/output error — the disk or network file system failed; check it and retry",
    errno.ENOENT: "no such file or directory — check the path",
}


def write_error_line(exc: OSError) -> str:
    """One line for an OSError: the file, what went wrong and what to do (no traceback)."""
    name = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        name = f"{name} -> {exc.filename2}"
    hint = _ERRNO_HINTS.get(exc.errno) if exc.errno is not None else None
    if hint is None:
        hint = (exc.strerror or str(exc) or type(exc).__name__).strip().splitlines()[0]
    return f"error: {name}: {hint}" if name else f"error: {hint}"
