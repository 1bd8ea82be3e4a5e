"""Help pages people can read: small adjustments of Typer's rich help (installed by `mtl`'s main).

  defaults    "[default: X]" written in a help string is kept (Rich markup would swallow it as a tag and
              print "Prepared dataset folder .")
  flags       boolean flags show no "<bool>" type: `--force` reads as a flag
  values      an option's value is named by what it is, not by its Python type: `--run RUN`, `--data DATA`,
              `--set KEY=VALUE`, `--workers N` (not "<path>", "<list[str]>", "<int range>"); `metavar_of`
  ranges      number ranges as people write them: "≥1", "0–0.9" (not "x>=1", "0.0<=x<=0.9")
  arguments   usage and the Arguments panel name an argument SRC (not "{src}" or "src <path>"), an optional
              one [SRC]; hidden arguments (old spellings kept working) are left out of the usage line

Each adjustment is skipped when the installed Typer lacks the function it wraps, so a Typer upgrade can
at worst bring back its own formatting, never break the command line.
"""

from __future__ import annotations

import functools
import re
from typing import Any

_DEFAULT = re.compile(r"(?<!\\)\[(default\b)")

# the value of an option, by its long name, where the command does not name it itself (metavar=...)
METAVARS = {
    "run": "RUN",
    "compare": "RUN",
    "data": "DATA",
    "checkpoint": "CKPT",
    "device": "DEVICE",
    "set": "KEY=VALUE",
    "out": "PATH",
    "recipe": "NAME",
    "metric": "NAME",
    "preset": "NAME",
    "reference": "NAME",
    "classifier": "NAME",
    "split": "SPLIT",
    "layer": "LAYER",
    "class": "CLASS",
    "target-class": "CLASS",
    "source-class": "CLASS",
    "weights": "FILE",
    "image": "IMAGE",
    "images": "PATH",
    "predictions": "PATH",
    "save-predictions": "DIR",
    "train-json": "FILE",
    "val-json": "FILE",
    "train-images": "DIR",
    "val-images": "DIR",
    "voc2012": "DIR",
    "voc2007": "DIR",
    "sbd": "DIR",
    "workdir": "DIR",
    "input-size": "HxW",
    "score-threshold": "SCORE",
    "flip-rate": "SHARE",
    "val-fraction": "SHARE",
    "lr": "LR",
    "eps": "EPS",
}


def metavar_of(param: Any) -> str:
    """What help prints after an option: its own metavar, else `METAVARS` by its long name, else N for a whole
    number, else its long name in capitals (argparse's rule)."""
    if getattr(param, "metavar", None):
        return str(param.metavar)
    longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    name = longs[0][2:] if longs else str(param.name or "value")
    if name in METAVARS:
        return METAVARS[name]
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if annotation is int:
        return "N"
    return name.replace("-", "_").upper()


def _number(v: float) -> str:
    return f"{v:g}"


def number_range(lo: float | None, hi: float | None) -> str | None:
    """ "≥1", "≤5", "0–0.9" (None without bounds)."""
    if lo is None and hi is None:
        return None
    if hi is None:
        return f"≥{_number(lo)}"  # type: ignore[arg-type]
    if lo is None:
        return f"≤{_number(hi)}"
    return f"{_number(lo)}–{_number(hi)}"


@functools.cache  # once per process
def _patch_rich_utils() -> None:
    """Keep "[default: X]" of help strings in Rich markup (escaped, so that Rich prints it)."""
    try:
        from typer import rich_utils
    except ImportError:  # pragma: no cover - typer without rich support
        return
    make_text = getattr(rich_utils, "_make_rich_text", None)
    if make_text is not None:

        def _make_rich_text(*, text: str, style: str = "", markup_mode):
            if markup_mode == getattr(rich_utils, "MARKUP_MODE_RICH", "rich"):
                text = _DEFAULT.sub(r"\\[\1", text)
            return make_text(text=text, style=style, markup_mode=markup_mode)

        rich_utils._make_rich_text = _make_rich_text


def _with_rich_defaults(format_help):
    def wrapped(self, ctx, formatter):
        _patch_rich_utils()
        return format_help(self, ctx, formatter)

    return wrapped


@functools.cache  # once per process
def install() -> None:
    try:
        from typer import core
    except ImportError:  # pragma: no cover - typer without rich support
        return

    # typer.rich_utils (and rich's console) load only when a help page is drawn: `mtl recipes list` and the
    # other commands do not pay for them
    for cls in (getattr(core, "TyperCommand", None), getattr(core, "TyperGroup", None)):
        if cls is not None and hasattr(cls, "format_help"):
            cls.format_help = _with_rich_defaults(cls.format_help)

    option = getattr(core, "TyperOption", None)
    if option is not None and hasattr(option, "display_type_rich"):

        def display_type_rich(self, ctx):
            if getattr(self, "is_flag", False) and getattr(self, "is_bool_flag", True):
                return None
            name = metavar_of(self)
            return name + ("..." if self.nargs != 1 and not self.metavar else "")

        option.display_type_rich = display_type_rich
    if option is not None and hasattr(option, "_get_number_range_help_str"):

        def _get_number_range_help_str(self):
            if getattr(self, "count", False) and self.min == 0 and self.max is None:
                return None
            return number_range(getattr(self, "min", None), getattr(self, "max", None))

        option._get_number_range_help_str = _get_number_range_help_str

    argument = getattr(core, "TyperArgument", None)
    if argument is not None and hasattr(argument, "_usage_display_name"):

        def _name(self) -> str:
            return (self.metavar or self.name or "").upper()

        def _usage_display_name(self) -> str:
            name = _name(self) if self.required else f"[{_name(self)}]"
            return name + ("..." if self.nargs != 1 else "")

        def get_usage_pieces(self, ctx):
            return [] if getattr(self, "hidden", False) else [self._usage_display_name()]

        argument._usage_display_name = _usage_display_name
        argument.get_usage_pieces = get_usage_pieces
        if isinstance(getattr(argument, "display_name_raw", None), property):
            argument.display_name_raw = property(_name)  # the Arguments panel and "Missing argument 'SRC'"
        if hasattr(argument, "display_type_rich"):
            argument.display_type_rich = lambda self, ctx: None  # the name says what it is
        if hasattr(argument, "_get_number_range_help_str"):
            argument._get_number_range_help_str = lambda self: number_range(
                getattr(self, "min", None), getattr(self, "max", None)
            )
