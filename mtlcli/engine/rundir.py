"""A run directory's lock, and what `--force` may remove from it.

`RunLock(run_dir)`: an advisory lock file `RUN/.mtl.lock` holding the pid, host and start time of
the process that trains there. It is created with O_CREAT | O_EXCL (two processes cannot both take
it) and removed when the process leaves the `with` block, however it leaves. A lock left by a killed
process is stale: on the same host its pid no longer runs, and it is taken over with a note. A lock
of another host cannot be checked from here: it is refused, naming the host and the file to delete
once that run is known to be gone.

`discard_unstarted(run_dir)`: what a fresh run that failed before its first checkpoint wrote goes again.

`clear_run(run_dir)`: what `mtl train --force` removes — only what a run writes (recipe.toml,
metrics.jsonl, checkpoints/{last,best}.pt and their temporary files, TensorBoard event files,
eval/*.json, viz/ and plots/ PNGs), never a file of the user's own, which is kept and listed.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import time
from pathlib import Path

from mtlcli.errors import UserError

LOCK_NAME = ".mtl.lock"

# (folder relative to RUN ("" = RUN itself), glob patterns of what mtl writes there, recursive)
RUN_FILES: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("", ("recipe.toml", "metrics.jsonl", ".*.tmp"), False),
    ("checkpoints", ("last.pt", "best.pt", ".last.pt.*.tmp", ".best.pt.*.tmp", ".*.pt.*"), False),
    ("tensorboard", ("events.out.tfevents.*",), True),
    ("eval", ("*.json", ".*.tmp"), False),
    ("viz", ("*.png", ".*.tmp"), True),
    ("plots", ("*.png", ".*.tmp"), True),
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """`with RunLock(run_dir):` — hold RUN/.mtl.lock while training; another process holding it is a
    UserError. Re-entrant within a process: an inner `with` neither takes nor releases it.

    `what` names the action in the refusal ("train into", "--force on")."""

    def __init__(
        self, run_dir: str | Path, what: str = "train into", *, name: str = LOCK_NAME, doing: str = "training"
    ) -> None:
        self.path = Path(run_dir) / name
        self.what, self.doing = what, doing
        self.target = self.path.parent
        self.held = False
        self.created: list[Path] = []  # the folders acquire() made for the lock, deepest first
        self.took_over: dict | None = None

    def _read(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # half written or garbage: treated as stale below only if old

    def acquire(self) -> RunLock:
        # the run folder and its parents (runs/<recipe>/) made here go with the lock if they stay empty
        self.created = _missing_folders(self.path.parent)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = self._read()
                if holder is None:
                    continue  # released meanwhile: try again
                if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                    return self  # this process holds it already (the command, then the engine): re-entrant
                if self._stale(holder):
                    self.took_over = holder
                    self.path.unlink(missing_ok=True)
                    continue
                raise UserError(
                    f"cannot {self.what} {self.target}: it is locked by process {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')} (since {holder.get('started', '?')}), which is {self.doing} there — "
                    f"wait for it, stop it, or choose another --out; delete {self.path} only if that process is gone"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise UserError(f"cannot take the lock {self.path}: other processes keep taking it — retry")

    def _stale(self, holder: dict) -> bool:
        pid, host = holder.get("pid"), holder.get("host")
        if not holder:
            # unreadable content: stale once it is older than a minute (a writer needs microseconds)
            try:
                return time.time() - self.path.stat().st_mtime > 60
            except OSError:
                return True
        if host != socket.gethostname() or not isinstance(pid, int):
            return False
        return pid != os.getpid() and not _alive(pid)

    def release(self) -> None:
        if self.held:
            holder = self._read()
            if holder is not None and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False
            for folder in self.created:  # a run that failed before writing anything leaves no folder
                _rmdir_if_empty(folder)
            self.created = []

    def __enter__(self) -> RunLock:
        return self.acquire() if not self.held else self

    def __exit__(self, *exc) -> None:
        self.release()


def write_run_recipe(run_dir: Path, recipe: dict) -> None:
    """`RUN/recipe.toml`: the resolved recipe under a provenance header, whole or not at all."""
    from mtlcli.provenance import header
    from mtlcli.recipes import dump_toml
    from mtlcli.safety import atomic_write_text

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "recipe.toml", header() + dump_toml(recipe))


def holds_files(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds anything besides the lock (a run, or a user's files)."""
    run_dir = Path(run_dir)
    return run_dir.is_dir() and any(p.name != LOCK_NAME for p in run_dir.iterdir())


def discard_unstarted(run_dir: str | Path) -> None:
    """After a fresh run failed before its first checkpoint: remove what it wrote (recipe.toml, an empty
    metrics.jsonl), so that a failed `mtl train` leaves no run behind; the lock's release then removes
    the folders it made (runs/<recipe>/expN, runs/<recipe>/). A run with a last.pt is kept: it resumes."""
    if not (Path(run_dir) / "checkpoints" / "last.pt").is_file():
        clear_run(run_dir)


def prepare_lock(out: str | Path) -> RunLock:
    """`with prepare_lock(out):` — what `mtl prepare` holds while it writes the prepared dataset `out`:
    the run lock's rule for `.OUT.mtl.lock` beside it (a second prepare into the same --out is refused
    naming the first one's process; a lock left by a killed process is taken over)."""
    out = Path(out).expanduser().resolve()
    lock = RunLock(out.parent, "prepare into", name=f".{out.name}.mtl.lock", doing="preparing")
    lock.target = out
    return lock


def check_unlocked(run_dir: str | Path, what: str) -> None:
    """Refuse `what` (e.g. "--force on") while another live process holds the run's lock."""
    lock = RunLock(run_dir, what)
    holder = lock._read() if lock.path.exists() else None
    if holder is not None and not lock._stale(holder) and holder.get("pid") != os.getpid():
        raise UserError(
            f"cannot {what} {Path(run_dir)}: process {holder.get('pid', '?')} on {holder.get('host', '?')} is training "
            f"there (lock {lock.path}) — wait for it or stop it first"
        )


def clear_run(run_dir: str | Path) -> list[Path]:
    """Remove what a run wrote in `run_dir` (see RUN_FILES) and the folders this leaves empty.
    Returns the files kept: anything else, such as a user's own file in checkpoints/."""
    run_dir = Path(run_dir)
    for sub, patterns, recursive in RUN_FILES:
        folder = run_dir / sub if sub else run_dir
        if not folder.is_dir() or folder.is_symlink():
            continue
        for pattern in patterns:
            for p in folder.rglob(pattern) if recursive else folder.glob(pattern):
                if p.is_file() or p.is_symlink():
                    p.unlink(missing_ok=True)
        if sub:
            for d in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                _rmdir_if_empty(d)
            _rmdir_if_empty(folder)
    kept = [p for p in run_dir.rglob("*") if p.is_file() and p.name != LOCK_NAME]
    return sorted(kept)


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return missing


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise


def next_run_dir(base: Path) -> Path:
    """`base/expN` with N one past the highest existing expN (exp1 for a new recipe)."""
    taken = [int(m.group(1)) for p in base.glob("exp*") if (m := re.fullmatch(r"exp(\d+)", p.name))]
    return base / f"exp{max(taken, default=0) + 1}"
