"""The training console's layout: what the progress line keeps when the terminal is narrow, and the pause
that gives periodic evaluation its own progress bar, and `Display`, the training loop's progress line.

The line is `train [bar] N/TOTAL eta H:MM:SS INFO`; INFO keeps, in this order, as many parts as fit:
loss, img/s, the loss terms, lr, data wait, memory. In 80 columns the bar shrinks to 10 cells and INFO
keeps at least loss and img/s, so iteration/total, loss, img/s and ETA are always on the line.
"""

from __future__ import annotations

import contextlib
import sys
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


class Display:
    """The rich progress line (rank 0): iteration/total, ETA, loss, images/s, then (as the width allows)
    loss terms, lr, data wait and memory — in an 80-column terminal the detail goes first. Periodic
    evaluation pauses the line for its own progress bar and prints its results as a line."""

    def __init__(self, enabled: bool, total: int, start: int, console: Any = None) -> None:
        self.progress = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            bar = BarColumn(bar_width=None)
            self.progress = Progress(
                TextColumn("[bold]train"),
                bar,
                MofNCompleteColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
            )
            bar.bar_width = bar_width(self.progress.console.width)
            self.task = self.progress.add_task("train", total=total, completed=start, info="")
            # in a log file or CI a live bar renders only at the end: print each logged step as a line
            self.lines = not self.progress.console.is_terminal
            self.total = total

    def __enter__(self) -> Display:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, iteration: int, record: dict | None = None) -> None:
        if self.progress is None:
            return
        fields: dict[str, Any] = {}
        if record is not None:
            room = self.progress.console.width - (
                bar_width(self.progress.console.width) + 2 * len(str(self.total)) + 24
            )
            fields["info"] = info_text(record, room if not self.lines else 10_000)
        self.progress.update(self.task, completed=iteration, **fields)
        if self.lines and fields:
            self.progress.console.print(f"train {iteration}/{self.total}  {fields['info']}")

    def evaluating(self) -> Any:
        """A context for periodic evaluation: the train line stops, evaluation shows its own bar."""
        return paused(self.progress)

    def print(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text)

    def note(self, text: str) -> None:
        """A line the user needs even without the display (then on stderr), never wrapped, so that a
        command in it can be copied."""
        if self.progress is not None:
            self.progress.console.print(text, soft_wrap=True, markup=False)
        else:
            print(text, file=sys.stderr)
