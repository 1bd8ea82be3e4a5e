"""`mtl recipes list` (every recipe with its model, dataset and schedule) and `mtl recipes show NAME`."""

from __future__ import annotations

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


@app.command("list")
def list_recipes() -> None:
    """Every recipe in recipes/ with its model, dataset and schedule."""
    from rich.console import Console
    from rich.table import Table

    from mtlcli.recipes import available_recipes, load_recipe

    table = Table(show_header=True)
    for column in ("recipe", "model", "dataset", "schedule"):
        table.add_column(column)
    for name in available_recipes():
        try:
            # The model check imports the family; listing stays quick and survives a broken family.
            r = load_recipe(name, check_model=False)
        except UserError as exc:
            table.add_row(name, "", "", f"[red]invalid: {exc}[/red]")
            continue
        table.add_row(name, str(r["model"].get("name", "?")), r["data"]["dataset"], schedule_summary(r))
    Console().print(table)


@app.command("show")
def show_recipe(
    name: str = typer.Argument(..., help="Recipe name or path to a .toml file."),
    set_: list[str] = typer.Option([], "--set", help="Override a key before showing, e.g. --set train.lr=0.001."),
) -> None:
    """Print the resolved recipe (base merged, defaults filled, overrides applied) as TOML."""
    from mtlcli.recipes import dump_toml, load_recipe

    print(dump_toml(load_recipe(name, set_)), end="")
