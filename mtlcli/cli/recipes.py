"""`mtl recipes list` (every recipe with its model, dataset and schedule) and `mtl recipes show NAME`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import typer

from mtlcli.errors import UserError

app = typer.Typer(help="List and show training recipes.", no_args_is_help=True)


def schedule_summary(recipe: dict) -> str:
    """One line: optimiser, schedule, iterations x batch, stages."""
    from mtlcli.recipes import total_iterations

    t = recipe["train"]
    text = f"{t['optimizer']} {t['schedule']}, {total_iterations(recipe)} it x {t['batch_size']}"
    if t["stages"]:
        text += f", {len(t['stages'])} stages"
    return text


def quick_recipe(name: str, read: Callable[[Path], dict] | None = None) -> dict:
    """A shipped recipe merged with its base and [data]/[train]/[eval] defaults, without validation: what
    `recipes list` needs, read from the TOML files alone (no torch import: listing stays well under a second).
    `read` reads one TOML file (default `mtlcli.recipes.read_toml`; `recipes list` reads each base once)."""
    import copy

    from mtlcli.recipes import DEFAULTS, STAGE_DEFAULTS, find_recipe, merge, read_toml

    read = read or read_toml
    path = find_recipe(name)
    raw = copy.deepcopy(read(path))
    base_ref = raw.pop("extends", None)
    if isinstance(base_ref, str):
        raw = merge(copy.deepcopy(read(find_recipe(base_ref, relative_to=path.parent))), raw)
    recipe: dict = {"model": dict(raw.get("model", {}))}
    for section, defaults in DEFAULTS.items():
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise UserError(f"{path}: [{section}] must be a table")
        recipe[section] = {**copy.deepcopy(defaults), **table}
    recipe["train"]["stages"] = [{**STAGE_DEFAULTS, **s} for s in recipe["train"]["stages"] if isinstance(s, dict)]
    return recipe


@app.command("list")
def list_recipes(
    check: bool = typer.Option(False, "--check", help="Also validate every recipe fully (imports the models: slower)."),
) -> None:
    """Every recipe in recipes/ with its model, dataset and schedule."""
    from rich.console import Console
    from rich.table import Table

    from mtlcli.recipes import available_recipes, load_recipe, read_toml

    read = functools.lru_cache(maxsize=None)(read_toml)  # a base recipe is read once, not once per child
    table = Table(show_header=True)
    for column in ("recipe", "model", "dataset", "schedule"):
        table.add_column(column)
    for name in available_recipes():
        try:
            r = load_recipe(name) if check else quick_recipe(name, read)
            summary = schedule_summary(r)
        except (UserError, KeyError, TypeError, ValueError) as exc:
            table.add_row(name, "", "", f"[red]invalid: {exc}[/red]")
            continue
        table.add_row(name, str(r["model"].get("name", "?")), str(r["data"]["dataset"]), summary)
    Console().print(table)


@app.command("show")
def show_recipe(
    name: str = typer.Argument(..., help="Recipe name or path to a .toml file."),
    set_: list[str] = typer.Option([], "--set", help="Override a key before showing, e.g. --set train.lr=0.001."),
) -> None:
    """Print the resolved recipe (base merged, defaults filled, overrides applied) as TOML."""
    from mtlcli.recipes import dump_toml, load_recipe

    print(dump_toml(load_recipe(name, set_)), end="")
