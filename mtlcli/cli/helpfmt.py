"""Help pages people can read: three small adjustments of Typer's rich help (installed by `mtl`'s main).

  defaults    "[default: X]" written in a help string is kept (Rich markup would swallow it as a tag and
              print "Prepared dataset folder .")
  flags       boolean flags show no "<bool>" type: `--force` reads as a flag
  arguments   usage names a required argument SRC (not "{src}"), an optional one [SRC]

Each adjustment is skipped when the installed Typer lacks the function it wraps, so a Typer upgrade can
at worst bring back its own formatting, never break the command line.
"""

from __future__ import annotations

import re

_DEFAULT = re.compile(r"(?<!\\)\[(default\b)")
_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    try:
        from typer import core, rich_utils
    except ImportError:  # pragma: no cover - typer without rich support
        return

    make_text = getattr(rich_utils, "_make_rich_text", None)
    if make_text is not None:
        def _make_rich_text(*, text: str, style: str = "", markup_mode):  # type: ignore[no-untyped-def]
            if markup_mode == getattr(rich_utils, "MARKUP_MODE_RICH", "rich"):
                text = _DEFAULT.sub(r"\\[\1", text)
            return make_text(text=text, style=style, markup_mode=markup_mode)

        rich_utils._make_rich_text = _make_rich_text

    option = getattr(core, "TyperOption", None)
    if option is not None and hasattr(option, "display_type_rich"):
        type_of = option.display_type_rich

        def display_type_rich(self, ctx):  # type: ignore[no-untyped-def]
            if getattr(self, "is_flag", False) and getattr(self, "is_bool_flag", True):
                return None
            return type_of(self, ctx)

        option.display_type_rich = display_type_rich

    argument = getattr(core, "TyperArgument", None)
    if argument is not None and hasattr(argument, "_usage_display_name"):
        def _usage_display_name(self) -> str:  # type: ignore[no-untyped-def]
            name = (self.metavar or self.name or "").upper()
            name = name if self.required else f"[{name}]"
            return name + ("..." if self.nargs != 1 else "")

        argument._usage_display_name = _usage_display_name
