"""`mtl recipes list|show NAME` (placeholder group until the training engine lands)."""
import typer

app = typer.Typer(help="List and show training recipes.", no_args_is_help=True)


@app.command("list")
def list_recipes() -> None:
    """List the recipes in recipes/."""
    from pathlib import Path

    for p in sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.toml")):
        print(p.stem)
