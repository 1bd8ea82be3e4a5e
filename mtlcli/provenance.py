"""Where a result came from: the mtl version, the command line and the project's git commit.

Written as comment lines at the top of every run's `recipe.toml` (`header`) and as the "provenance" entry
of `mtl eval`'s JSON (`provenance`). `mtl`'s entry point records its own arguments with `set_command`;
outside the command line (a library call) the command is the Python process's argv.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from mtlcli import __version__

_COMMAND: list[str] | None = None


def set_command(argv: list[str] | None) -> None:
    """Remember the arguments of the running `mtl` command (None: sys.argv[1:])."""
    global _COMMAND
    _COMMAND = list(sys.argv[1:] if argv is None else argv)


def quote_argument(arg: str) -> str:
    """One argument as bash reads it back, always on one line: `shlex.quote`, or ANSI-C quoting
    ($'...' with \\n, \\t, \\xHH escapes) when it holds a newline or another control character — the
    one rule by which mtl records a command line (a raw newline would end a `# command:` comment and
    inject what follows into the file)."""
    if arg.isprintable():
        return shlex.quote(arg)
    out = []
    for ch in arg:
        if ch in "\\'":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif not ch.isprintable():
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "$'" + "".join(out) + "'"


def command_line() -> str:
    """`mtl ARGS` as a shell could run it again (or the Python argv outside the `mtl` command), on one
    line whatever the arguments hold (`quote_argument`)."""
    if _COMMAND is not None:
        args = ["mtl", *_COMMAND]
    else:
        args = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    return " ".join(quote_argument(str(a)) for a in args)


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the git checkout mtl is imported from, "+dirty" when tracked files changed; None
    when mtl is not run from a checkout (an installed wheel) or git is missing."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if status else "") if head else None


def provenance() -> dict[str, Any]:
    """{"mtl_version", "command", "git_commit"} of the running process."""
    return {"mtl_version": __version__, "command": command_line(), "git_commit": git_commit()}


def header() -> str:
    """TOML comment lines naming the version, command line and commit (the top of a run's recipe.toml)."""
    p = provenance()
    return f"# written by mtl {p['mtl_version']} (git {p['git_commit'] or 'unknown'})\n# command: {p['command']}\n"
