"""The training console's layout: what the progress line keeps when the terminal is narrow, and the pause
that gives periodic evaluation its own progress bar (used by `mtlcli.engine.train.Display`).

The line is `train [bar] N/TOTAL eta H:MM:SS INFO`; INFO keeps, in this order, as many parts as fit:
loss, img/s, the loss terms, lr, data wait, memory. In 80 columns the bar shrinks to 10 cells and INFO
keeps at least loss and img/s, so iteration/total, loss, img/s and ETA are always on the line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def bar_width(columns: int) -> int:
    """Cells of the progress bar for a terminal `columns` wide."""
    return 24 if columns >= 120 else 10


def info_text(record: dict[str, Any], room: int) -> str:
    """The INFO part of the line for a logged training record, within `room` characters where possible
    (loss and img/s are always there)."""
    terms = " ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in record.get("losses", {}).items())
    parts = [f"loss {record['loss']:.3f}", f"{record['images_per_s']:.1f} img/s"]
    optional = [
        f"({terms})" if terms else "",
        f"lr {record['lr']:.2e}",
        f"data {100 * record.get('data_wait', 0):.0f}%",
        f"mem {record.get('memory_mb', 0):.0f}MB",
    ]
    text = "  ".join(parts)
    for extra in optional:
        if extra and len(text) + 2 + len(extra) <= room:
            text += "  " + extra
    return text


@contextlib.contextmanager
def paused(progress: Any) -> Iterator[bool]:
    """Stop the live train line (if any) while the body runs; yields whether the body may show its own
    progress bar (only when there is a live terminal display to give way)."""
    if progress is None:
        yield False
        return
    live = progress.console.is_terminal
    progress.stop()
    try:
        yield live
    finally:
        progress.start()
