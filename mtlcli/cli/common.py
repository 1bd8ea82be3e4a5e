"""What every `mtl` command means the same way by: `--device` (`resolve_device`), the options that name a
trained model (`RUN_OPTION`, `CHECKPOINT_OPTION`, `DEVICE_OPTION`, `model_source`), and the option names
checked across the whole command line by tests/cli/test_consistency.py:

    --run RUN         a run directory of `mtl train`      --data DATA     a prepared dataset
    --batch-size N    images per forward pass             --device D      auto | cpu | cuda | cuda:N
    -o/--out PATH     where the command writes            -q/--quiet      no progress display
"""

from __future__ import annotations

from pathlib import Path

import typer

from mtlcli.devices import resolve_device as resolve_device  # the one --device rule, for every command
from mtlcli.errors import UserError

DEVICE_HELP = "auto (CUDA if available, else CPU), cpu, cuda or cuda:N."

# A trained model: one run directory or one checkpoint file, and the device it runs on.
RUN_OPTION = typer.Option(
    None,
    "--run",
    help="Run directory of `mtl train` (uses the checkpoint its recipe reports: [eval] checkpoint, "
    "last.pt by default).",
)
CHECKPOINT_OPTION = typer.Option(None, "--checkpoint", help="A checkpoint file written by `mtl train`.")
DEVICE_OPTION = typer.Option("auto", "--device", help=DEVICE_HELP)


def model_source(run: Path | None, checkpoint: Path | None) -> Path:
    """The run directory or checkpoint file of `--run RUN | --checkpoint CKPT`; both or neither is a UserError."""
    if (run is None) == (checkpoint is None):
        raise UserError("give either a run directory (--run) or a checkpoint file (--checkpoint)")
    return run if run is not None else checkpoint  # type: ignore[return-value]


QUIET_HELP = "No progress display; print only the final line."


def quiet_output(quiet: bool):
    """A context in which standard output is dropped when `quiet` (for library code that draws its own
    progress bars and tables); errors still reach the user as exceptions, stderr stays."""
    import contextlib
    import io

    return contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
