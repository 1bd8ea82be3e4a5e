"""The training console keeps iteration/total, loss, img/s and ETA in 80 columns (issue 18)."""

from __future__ import annotations

import io

from rich.console import Console

from mtlcli.engine.console import info_text
from mtlcli.engine.train import Display

RECORD = {
    "loss": 1.23456,
    "losses": {"loss_det_cls": 0.5, "loss_det_box": 0.4, "loss_seg": 0.33},
    "lr": 0.01,
    "images_per_s": 12.3,
    "data_wait": 0.05,
    "memory_mb": 2048.0,
}


def test_detail_is_dropped_first():
    wide = info_text(RECORD, 200)
    assert wide.startswith("loss 1.235  12.3 img/s") and "det_cls 0.500" in wide and "mem 2048MB" in wide
    narrow = info_text(RECORD, 30)
    assert narrow == "loss 1.235  12.3 img/s"


def test_80_columns_keep_iteration_loss_speed_and_eta():
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)  # an 80-column terminal
    display = Display(True, total=12000, start=0, console=console)
    display.update(345, RECORD)
    console.print(display.progress.get_renderable())
    lines = [ln for ln in out.getvalue().splitlines() if "train" in ln]
    assert lines and all(len(ln) <= 80 for ln in lines)
    line = lines[-1]
    assert "345/12000" in line and "loss 1.235" in line and "img/s" in line and "eta" in line
