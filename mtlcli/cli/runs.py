"""`mtl runs [DIR]`: the training runs under DIR as a table, or chosen runs side by side.

    mtl runs                      every run under ./runs (folders holding recipe.toml and metrics.jsonl)
    mtl runs DIR                  every run under DIR
    mtl runs --run RUN --run RUN ...   one column per run: recipe, progress, metrics, recipe keys that differ

Read from the files alone (recipe.toml, metrics.jsonl), without torch:
    run         the run directory as you would type it (DIR/<recipe>/expN)
    recipe      the --recipe of the command in recipe.toml's header, else the model name (a column of its own
                only where some run's path does not name its recipe)
    iterations  last logged iteration / the recipe's total
    best        the best value of the recipe's first eval metric in metrics.jsonl, with its iteration
    status      finished (last iteration = total), running (metrics.jsonl written in the last
                `RUNNING_SECONDS`; inferred), else interrupted
"""

from __future__ import annotations

import json
import re
import shlex
import time
import tomllib
from pathlib import Path
from typing import Any

import typer

from mtlcli.errors import UserError

RUNNING_SECONDS = 120


def find_runs(root: Path, depth: int = 4) -> list[Path]:
    """Run directories (recipe.toml + metrics.jsonl) under `root` (itself included), sorted."""
    if not root.exists():
        raise UserError(f"{root} does not exist — give the folder your runs are in (the default is ./runs)")
    patterns = ["recipe.toml"] + ["/".join(["*"] * d) + "/recipe.toml" for d in range(1, depth + 1)]
    found = {m.parent for pattern in patterns for m in root.glob(pattern) if (m.parent / "metrics.jsonl").is_file()}
    return sorted(found)


def summarize(run: Path) -> dict[str, Any]:
    """What the runs table shows for one run directory (see the module docstring)."""
    from mtlcli.recipes import total_iterations

    text = (run / "recipe.toml").read_text()
    try:
        recipe = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{run}/recipe.toml is not valid TOML ({exc})") from None
    name = str(recipe.get("model", {}).get("name", "?"))
    match = re.search(r"^# command: (.*)$", text, flags=re.M)
    if match:
        words = shlex.split(match.group(1))
        for flag in ("--recipe", "-r"):
            if flag in words and words.index(flag) + 1 < len(words):
                name = Path(words[words.index(flag) + 1]).stem
    try:
        total = total_iterations(recipe)
    except (KeyError, TypeError, ValueError):
        total = None
    metrics_path = run / "metrics.jsonl"
    last_it, last_train, evals = 0, {}, []
    for line in metrics_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        if record.get("type") == "train":
            last_it, last_train = max(last_it, int(record.get("iteration", 0))), record
        elif record.get("type") == "eval":
            evals.append(record)
    wanted = list(recipe.get("eval", {}).get("metrics") or [])
    metric = wanted[0] if wanted else (next(iter(evals[-1]["metrics"]), None) if evals else None)
    best = None
    for record in evals:
        value = record.get("metrics", {}).get(metric)
        if isinstance(value, (int, float)) and (best is None or value > best[0]):
            best = (float(value), int(record.get("iteration", 0)))
    if total is not None and last_it >= total:
        status = "finished"
    elif time.time() - metrics_path.stat().st_mtime < RUNNING_SECONDS:
        status = "running"
    else:
        status = "interrupted"
    return {
        "run": run,
        "recipe": name,
        "iteration": last_it,
        "total": total,
        "metric": metric,
        "best": best,
        "status": status,
        "last_eval": evals[-1].get("metrics", {}) if evals else {},
        "loss": last_train.get("loss"),
        "images_per_s": last_train.get("images_per_s"),
        "config": recipe,
    }


def summarize_or_broken(run: Path) -> dict[str, Any]:
    """`summarize`, or for a run whose files cannot be read (recipe.toml not TOML or not UTF-8, a
    metrics.jsonl record of another shape, an unreadable file, ...) a row with status "broken" and the
    reason: one broken run never stops `mtl runs` from listing the others."""
    try:
        return summarize(run)
    except (UserError, OSError, ValueError, TypeError, AttributeError, KeyError, IndexError, RecursionError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {
            "run": run,
            "recipe": "?",
            "iteration": 0,
            "total": None,
            "metric": None,
            "best": None,
            "status": "broken",
            "reason": reason[:200],
            "last_eval": {},
            "loss": None,
            "images_per_s": None,
            "config": {},
        }


def _flat(recipe: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for section, table in recipe.items():
        if isinstance(table, dict):
            for key, value in table.items():
                out[f"{section}.{key}"] = value
    return out


def register(app: typer.Typer) -> None:
    @app.command("runs")
    def runs(
        root: Path | None = typer.Argument(None, metavar="DIR", help="Folder holding runs [default: runs]."),
        run: list[Path] = typer.Option(
            [], "--run", help="A run to show side by side with the other --run ones (repeat: mtl runs --run A --run B)."
        ),
        compare: list[Path] = typer.Option([], "--compare", "-c", hidden=True),  # the name before --run
    ) -> None:
        """List training runs (recipe, iterations, best metric, status), or compare chosen runs side by side."""
        from rich.console import Console
        from rich.table import Table

        console = Console()
        chosen = [*run, *compare]
        if chosen and root is not None:
            raise UserError("give a folder to list (DIR) or runs to compare (--run RUN ...), not both")
        if chosen:
            missing = [c for c in chosen if not (c / "recipe.toml").is_file()]
            if missing:
                raise UserError(f"{missing[0]} is not a run directory (no recipe.toml) — see `mtl runs` for the runs")
            rows = [summarize_or_broken(c) for c in chosen]
            table = Table(title="runs side by side")
            table.add_column("", no_wrap=True)
            for r in rows:
                table.add_column(str(r["run"]), justify="right", overflow="fold")
            table.add_row("recipe", *[r["recipe"] for r in rows])
            table.add_row("status", *[r["status"] for r in rows])
            table.add_row("iterations", *[f"{r['iteration']}/{r['total'] or '?'}" for r in rows])
            for m in sorted({m for r in rows for m in r["last_eval"]}):
                table.add_row(f"{m} (last eval)", *[_pct(r["last_eval"].get(m)) for r in rows])
                table.add_row(
                    f"{m} (best)", *[_pct(r["best"][0]) if r["best"] and r["metric"] == m else "—" for r in rows]
                )
            table.add_row("loss (last)", *[_num(r["loss"]) for r in rows])
            table.add_row("img/s (last)", *[_num(r["images_per_s"]) for r in rows])
            flats = [_flat(r["config"]) for r in rows]
            for key in sorted({k for f in flats for k in f}):
                values = [json.dumps(f.get(key), default=str) for f in flats]
                if len(set(values)) > 1:
                    table.add_row(key, *values)
            console.print(table)
            return
        root = root if root is not None else Path("runs")
        found = find_runs(root)
        if not found:
            console.print(f"no runs under {root} — train one with `mtl train --recipe NAME`")
            return
        rows = [summarize_or_broken(found_run) for found_run in found]
        # the recipe column only where a run's path does not already name its recipe (runs/<recipe>/expN)
        named = all(r["recipe"] in r["run"].parts for r in rows)
        table = Table(title=f"runs under {root}")
        table.add_column("run", overflow="fold")
        if not named:
            table.add_column("recipe", overflow="fold")
        table.add_column("iterations", justify="right", no_wrap=True)
        table.add_column("best", no_wrap=True)
        table.add_column("status", no_wrap=True)
        for r in rows:
            best = f"{r['metric']} {_pct(r['best'][0])} @ {r['best'][1]}" if r["best"] else "—"
            colour = {"finished": "green", "running": "yellow", "interrupted": "red"}.get(r["status"], "red")
            table.add_row(
                str(r["run"]),
                *([] if named else [r["recipe"]]),
                f"{r['iteration']}/{r['total'] or '?'}",
                best,
                f"[{colour}]{r['status']}[/]",
            )
        console.print(table)
        for r in rows:
            if r["status"] == "broken":
                console.print(f"broken run {r['run']}: {r['reason']}", markup=False, soft_wrap=True)


def _pct(value: Any) -> str:
    return f"{100 * float(value):.2f}%" if isinstance(value, (int, float)) else "—"


def _num(value: Any) -> str:
    return f"{float(value):.4g}" if isinstance(value, (int, float)) else "—"
