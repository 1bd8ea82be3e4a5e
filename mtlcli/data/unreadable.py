"""Training goes on past a file that cannot be read: the sample is named once and replaced.

A corrupt image that `mtl prepare` could not see (damage inside a complete file; `--verify` decodes
every image to find those) must not end a long run hours in, with advice to prepare again that
cannot help. `SkipUnreadable(dataset)` wraps a map-style dataset for training: when reading sample i
fails with a read error (an `OSError`, `ValueError` or `SyntaxError` from the decoder, or the
`UserError` the dataset raises naming the file), it warns once per file on stderr with the file and
the reason, remembers the index, and returns the next readable sample (i+1, i+2, ... wrapping
around) instead, so the batch keeps its size and the substitution is the same on every run and
resume. When no sample can be read at all, the first error is raised.

Evaluation does not skip: a metric over fewer images than the split would be silently wrong, so
there an unreadable file stays an error that names it.
"""

from __future__ import annotations

import sys
from typing import Any

from torch.utils.data import Dataset

from mtlcli.errors import UserError

READ_ERRORS = (OSError, ValueError, SyntaxError, UserError)
MAX_TRIES = 64  # consecutive unreadable samples before giving up (a dataset that is mostly gone)


class SkipUnreadable(Dataset):
    """`dataset` with unreadable samples replaced by the next readable one (see the module docstring).
    Attributes other than these are the wrapped dataset's (det_classes, seg_classes, meta, ...)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.bad: dict[int, str] = {}  # index -> reason, per process (each DataLoader worker has its own)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "bad"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # settings such as `targets` are the wrapped dataset's: set them there
        if name in ("dataset", "bad"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.dataset, name, value)

    def _name(self, index: int) -> str:
        info = getattr(self.dataset, "image_info", None)
        try:
            return str(info(index)["file_name"]) if info is not None else f"sample {index}"
        except Exception:  # naming must never fail the run
            return f"sample {index}"

    def __getitem__(self, index: int):
        n = len(self)
        first: BaseException | None = None
        for step in range(min(n, MAX_TRIES)):
            i = (index + step) % n
            if i in self.bad:
                continue
            try:
                return self.dataset[i]
            except READ_ERRORS as exc:
                first = first or exc
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                self.bad[i] = reason
                print(
                    f"warning: skipping unreadable {self._name(i)} in training: {reason}", file=sys.stderr, flush=True
                )
        if first is not None and not isinstance(first, UserError):
            raise UserError(
                f"{min(n, MAX_TRIES)} samples in a row from {self._name(index)} on cannot be read "
                f"(first: {first}) — restore the files or prepare the dataset again"
            ) from None
        if first is not None:
            raise first
        raise UserError(
            f"{min(n, MAX_TRIES)} samples in a row from {self._name(index)} on were unreadable — "
            "restore the files or prepare the dataset again"
        )
