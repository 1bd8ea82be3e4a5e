"""The `mtl` command: a Typer app whose command groups live one per module in this package.

Every command is a thin wrapper: parse, call a plain function, print. User errors (`UserError`,
and every `OSError`: missing files, read-only or full file systems, ...) become one line on stderr and
exit status 2; `MTL_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from mtlcli.cli.helpfmt import install as install_help_format

app = typer.Typer(
    name="mtl",
    help="Multi-task computer vision: detect objects and segment the scene with one model.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)

# (module, group name or None for a plain command registered by the module itself)
_GROUPS = [
    ("mtlcli.cli.prepare", "prepare"),
    ("mtlcli.cli.recipes", "recipes"),
    ("mtlcli.cli.train", None),
    ("mtlcli.cli.eval", None),
    ("mtlcli.cli.viz", "viz"),
    ("mtlcli.cli.benchmark", None),
    ("mtlcli.cli.quickstart", None),
    ("mtlcli.cli.anchors", None),
    ("mtlcli.cli.runs", None),
    ("mtlcli.cli.predict", None),
    ("mtlcli.cli.export", None),
]


def _register() -> None:
    for module_name, group in _GROUPS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command group not written yet
                continue
            raise
        if group is None:
            module.register(app)
        else:
            app.add_typer(module.app, name=group)


_register()
install_help_format()


def _version(value: bool) -> None:
    if value:
        from mtlcli import __version__
        from mtlcli.provenance import git_commit

        commit = git_commit()
        print(f"mtl {__version__}" + (f" (git {commit})" if commit else ""))
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the mtl version (and git commit) and stop."
    ),
) -> None:
    """Multi-task computer vision: detect objects and segment the scene with one model."""


def error_line(exc: BaseException) -> str:
    from mtlcli.errors import UserError

    if isinstance(exc, UserError):
        return f"error: {exc}"
    if isinstance(exc, FileNotFoundError):
        name = exc.filename or str(exc)
        return f"error: {name}: no such file or directory — check the path"
    if isinstance(exc, PermissionError):
        return f"error: {exc.filename}: permission denied — choose a location you can write to"
    if isinstance(exc, OSError):  # read-only file system, disk full, name too long, not a directory, ...
        from mtlcli.safety import write_error_line

        return write_error_line(exc)
    return f"error: {exc}"


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning user errors into one line and exit status 2.

    Usage errors (unknown option, missing argument) are Typer's own: a short message and status 2.
    """
    from mtlcli.errors import UserError
    from mtlcli.provenance import set_command

    set_command(argv)
    if not sys.stdout.isatty():  # logs and pipes: rich would wrap tables at 80 columns
        os.environ.setdefault("COLUMNS", "140")
    try:
        app(args=argv)
    except (UserError, OSError) as exc:
        if os.environ.get("MTL_DEBUG"):
            raise
        print(error_line(exc), file=sys.stderr)
        sys.exit(2)
