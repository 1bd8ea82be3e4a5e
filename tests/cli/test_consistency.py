"""One command line: the same option means the same thing in every command (issue 18).

The rules are checked by walking the whole Typer app, so a command added later is held to them too:
  --run RUN, --data DATA      options, never positional arguments
  --batch-size                the only name of a batch size
  --device                    auto (default) | cpu | cuda | cuda:N, one meaning everywhere
  -o/--out, -q/--quiet        on every command that writes files or shows progress; -o and -q mean nothing else
  help                        every visible option has help, shows its default, flags read as flags, numbers as
                              people write them; values are named (RUN, DATA, KEY=VALUE, N), not typed
                              ("<path>", "<list[str]>"); usage names arguments in capitals, hidden ones not at all
  one kind per name           a long option is a flag in every command or takes a value in every command
Hidden options and arguments (old spellings kept for compatibility) are exempt.
"""

from __future__ import annotations

import re

import pytest
import typer

from mtlcli.cli.helpfmt import metavar_of
from mtlcli.cli.main import app, main

# what Typer prints for an option's value when nobody named it: "<path>", "<list[str]>", "<int range>", "{src}"
TYPE_NAMES = re.compile(r"<(path|str|text|int|float|bool|list|tuple|file|dir|datetime|choice)\b[^>]*>|\{[a-z_]+\}")
# a named value: RUN, DATA, KEY=VALUE, N, HxW, H W, or the choices (onnx|torchscript)
METAVAR = re.compile(r"[A-Z][A-Z0-9_]*(=[A-Z]+)?|HxW|H W|[a-z0-9]+(\|[a-z0-9]+)+")

# old or competing spellings of the canonical options
FORBIDDEN = {
    "--batch",
    "--bs",
    "--output",
    "--outdir",
    "--out-dir",
    "--output-dir",
    "--run-dir",
    "--gpu",
    "--cuda",
    "--dataset",
    "--data-dir",
    "--silent",
    "--no-progress",
}
# commands that write into a folder they name otherwise (documented in their help)
OUT_EXCEPTIONS = {("quickstart",): "--workdir"}
# commands whose console output is the point (a guided walkthrough), exempt from -q
QUIET_EXCEPTIONS = {("quickstart",)}


def _commands() -> list[tuple[tuple[str, ...], object]]:
    root = typer.main.get_command(app)  # Typer's own (click-like) command objects
    found = []

    def walk(cmd, path: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
        if getattr(cmd, "commands", None):
            for name, sub in cmd.commands.items():
                walk(sub, path + (name,))
        else:
            found.append((path, cmd))

    walk(root, ())
    return found


COMMANDS = _commands()
IDS = [" ".join(p) for p, _ in COMMANDS]


def _visible(cmd) -> list:  # type: ignore[no-untyped-def]
    return [p for p in cmd.params if not getattr(p, "hidden", False) and p.name != "help"]


def _is_option(p) -> bool:  # type: ignore[no-untyped-def]
    return p.param_type_name == "option"


def test_the_walk_finds_the_commands():
    names = set(IDS)
    assert {"train", "eval", "viz adversarial", "viz curves", "prepare synthetic", "recipes list", "benchmark"} <= names


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_option_names_are_the_canonical_ones(path, cmd):
    for p in _visible(cmd):
        opts = set(getattr(p, "opts", [])) | set(getattr(p, "secondary_opts", []))
        where = f"mtl {' '.join(path)}: {p.name}"
        assert not opts & FORBIDDEN, f"{where} uses {opts & FORBIDDEN}"
        if p.name in ("run", "runs", "data"):
            assert _is_option(p), f"{where} must be an option (--run RUN / --data DATA), not positional"
            assert f"--{p.name.rstrip('s')}" in opts, where
        if p.name in ("batch", "batch_size"):  # a batch size (not e.g. export's --dynamic-batch flag)
            assert "--batch-size" in opts, where
        if p.name == "device":
            assert opts == {"--device"} and p.default in ("auto", None), where
        if p.name == "out":
            assert {"--out", "-o"} <= opts, f"{where}: -o/--out"
        if p.name == "quiet":
            assert {"--quiet", "-q"} <= opts, f"{where}: -q/--quiet"
        if "-o" in opts:
            assert p.name == "out", f"{where}: -o means --out"
        if "-q" in opts:
            assert p.name == "quiet", f"{where}: -q means --quiet"


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_writers_have_out_and_quiet(path, cmd):
    names = {p.name for p in _visible(cmd)}
    writes = bool(names & {"out", "force", "save_predictions"})
    if not writes:
        return
    if path in OUT_EXCEPTIONS:
        assert OUT_EXCEPTIONS[path].lstrip("-") in names
    else:
        assert "out" in names, f"mtl {' '.join(path)} writes files but has no -o/--out"
    if path not in QUIET_EXCEPTIONS:
        assert "quiet" in names, f"mtl {' '.join(path)} writes files but has no -q/--quiet"


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_help_is_complete_and_readable(path, cmd, capsys):
    for p in _visible(cmd):
        where = f"mtl {' '.join(path)}: {p.name}"
        if not _is_option(p):
            continue
        assert (p.help or "").strip(), f"{where} has no help"
        if getattr(p.type_descriptor, "annotation", None) is bool:
            assert p.is_flag, f"{where} is a boolean but not a flag"
        if p.is_flag:
            continue
        assert p.show_default is not False or "[default: " in p.help, f"{where} hides its default"
        if isinstance(p.default, tuple):  # Typer would print "256, 512": written by hand as typed, "256 512"
            assert p.show_default is False and "[default: " in p.help, f"{where}: default {p.default!r}"
        if isinstance(p.default, float):
            assert len(repr(p.default)) <= 8, f"{where}: default {p.default!r} is not a number people write"
    with pytest.raises(SystemExit):
        main([*path, "--help"])
    text = capsys.readouterr().out
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage, f"usage shows {usage.strip()!r}"
    assert "<bool>" not in text
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())
    assert not re.search(r"\w \.( |$)", flat), f"a help string lost its default: {flat}"
    # values named by what they are (RUN, DATA, KEY=VALUE, N), never by a Python type
    assert not TYPE_NAMES.search(flat), f"mtl {' '.join(path)} --help shows {TYPE_NAMES.search(flat).group()!r}"
    assert not re.search(r"x ?[<>]=|[<>]= ?x", flat), f"mtl {' '.join(path)}: a range not as people write it"
    for p in _visible(cmd):
        if _is_option(p) and not p.is_flag:
            assert METAVAR.fullmatch(metavar_of(p)), f"mtl {' '.join(path)} {p.opts[0]} {metavar_of(p)}"
    # usage: [OPTIONS], then the visible arguments in capitals; old spellings (hidden) stay out of it
    words = usage.split(" ".join(path), 1)[1].split()
    assert words[:1] == ["[OPTIONS]"] and all(w.strip("[].").isupper() for w in words[1:]), usage
    assert [w.strip("[].") for w in words[1:]] == [
        (p.metavar or p.name).upper() for p in _visible(cmd) if not _is_option(p)
    ], usage


def test_one_option_name_is_one_kind_of_value():
    """A long option is a flag everywhere or takes a value everywhere (`--train N` images is not `--train` the
    flag of another command)."""
    kinds: dict[str, dict[bool, list[str]]] = {}
    for path, cmd in COMMANDS:
        for p in _visible(cmd):
            if _is_option(p):
                for opt in [o for o in p.opts if o.startswith("--")]:
                    kinds.setdefault(opt, {}).setdefault(bool(p.is_flag), []).append(" ".join(path))
    mixed = {opt: k for opt, k in kinds.items() if len(k) > 1}
    assert not mixed, f"flag in one command, value in another: {mixed}"


def test_help_formatting_rules():
    from mtlcli.cli.helpfmt import number_range

    assert number_range(1, None) == "≥1" and number_range(0.0, 0.9) == "0–0.9" and number_range(None, 5) == "≤5"
    opt = typer.main.get_command(app).commands["runs"]
    (run,) = [p for p in opt.params if p.name == "run"]
    assert metavar_of(run) == "RUN"


def test_rendered_help_keeps_defaults_and_flags(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "cityscapes", "--help"])
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", capsys.readouterr().out).split())  # wrapped lines joined
    assert "[default: $MTL_DATA/cityscapes]" in text and "<bool>" not in text and "SRC" in text and "{src}" not in text
    with pytest.raises(SystemExit):
        main(["viz", "adversarial", "--help"])
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", capsys.readouterr().out).split())
    assert "[default: 8/255]" in text and "[default: auto]" in text and "[default: 0.95]" in text


def test_version_and_completion(capsys):
    from mtlcli import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code in (0, None) and capsys.readouterr().out.startswith(f"mtl {__version__}")
    root_opts = {o for p in typer.main.get_command(app).params for o in getattr(p, "opts", [])}
    assert "--install-completion" in root_opts and "--show-completion" in root_opts


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "tpu", "cuda:99"])
def test_device_is_one_line_for_anything_else(value):
    from mtlcli.cli.common import resolve_device
    from mtlcli.errors import UserError

    with pytest.raises(UserError, match="--device"):
        resolve_device(value)
    assert resolve_device("CPU") == "cpu" and resolve_device("auto") in ("cpu", "cuda")


def test_recipes_list_is_quick(capsys):
    import subprocess
    import sys

    # in a fresh interpreter: nothing else has imported torch yet
    code = (
        "import sys, time; t = time.perf_counter(); from mtlcli.cli.main import main\n"
        "try: main(['recipes', 'list'])\nexcept SystemExit: pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
        "print('heavy:', [m for m in ('numpy', 'matplotlib', 'PIL', 'typer.rich_utils') if m in sys.modules], "
        "file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "NO-TORCH" in done.stderr  # listing TOML files imports no model code
    assert "heavy: []" in done.stderr  # nor numpy or the help renderer (about 0.3 s in all on an idle CPU)
    assert "ivanet-tiny-synthetic" in done.stdout
