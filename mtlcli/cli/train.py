"""`mtl train --recipe NAME|PATH [--data DATA] [--out RUN] [--set k=v ...] [--weights CKPT] [--resume] [--force]
[--device D] [--tensorboard] [--cache ram]`, and `mtl train --from RUN_OR_CKPT --data DATA` (fine-tune: the
checkpoint's recipe, the data's classes; `mtlcli.engine.finetune.finetune_recipe`).

A thin wrapper around `mtlcli.engine.train.train`: resolve the recipe and the run directory, call, print
a summary. Under `torchrun --nproc_per_node N -m mtlcli train ...` every process runs this; rank 0
chooses the run directory and tells the others.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from mtlcli.engine.rundir import next_run_dir
from mtlcli.errors import UserError

# What a run directory holds (DESIGN.md §5); `--force` removes only the files mtl wrote in them
# (mtlcli.engine.rundir.RUN_FILES).
RUN_ENTRIES = ("recipe.toml", "metrics.jsonl", "checkpoints", "eval", "viz", "plots", "tensorboard")


def check_resumable(out: Path) -> None:
    """--resume of `out`: a UserError unless it holds the checkpoints/last.pt to continue from."""
    if not (out / "checkpoints" / "last.pt").is_file():
        raise UserError(f"{out} has no checkpoints/last.pt to resume from — drop --resume to start a new run")


def choose_run_dir(recipe_ref: str, out: Path | None, *, resume: bool, force: bool) -> Path:
    """The run directory to write, refusing to clobber an existing run without --resume or --force.

    --force removes only what a run writes (`mtlcli.engine.rundir.clear_run`), never a user's own file,
    and is refused while another process trains there."""
    from mtlcli.engine.rundir import LOCK_NAME, check_unlocked, clear_run
    from mtlcli.recipes import recipe_name

    if out is None:
        if resume:
            raise UserError("--resume needs --out RUN: the run directory to continue")
        return next_run_dir(Path("runs") / recipe_name(recipe_ref))
    if resume:
        check_resumable(out)
        return out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file — give a directory for the run")
    if out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()):
        if not force:
            from mtlcli.hints import resume_command

            go_on = (
                f"continue that run with --resume (`{resume_command(out)}`), "
                if (out / "checkpoints" / "last.pt").is_file()
                else ""
            )
            raise UserError(f"{out} already holds files — {go_on}start over with --force, or choose another --out")
        check_unlocked(out, "--force on")
        kept = clear_run(out)
        if kept:
            print(f"--force kept {len(kept)} file(s) that mtl did not write, e.g. {kept[0]}")
    return out


def lock_run_dir(recipe_ref: str, out: Path | None, *, resume: bool, force: bool):
    """(run directory, held RunLock): `choose_run_dir` under the run's lock, so that a second `train`
    into the same directory, or --force on a live run, is refused instead of interleaving two runs."""
    from mtlcli.engine.rundir import RunLock
    from mtlcli.safety import clean_orphans, refuse_protected_output

    if out is not None:
        refuse_protected_output(out, "--out")
    run_dir = choose_run_dir(recipe_ref, out, resume=resume, force=False) if out is None else out
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file — give a directory for the run")
    created = not run_dir.exists()
    lock = RunLock(run_dir, "--force on" if force else "train into").acquire()
    try:
        if out is not None:
            choose_run_dir(recipe_ref, out, resume=resume, force=force)
        # temporary files of a write that a killed run left behind
        clean_orphans(run_dir / "checkpoints")
        clean_orphans(run_dir)
    except BaseException:
        lock.release()
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir, lock


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_command(
        recipe: str | None = typer.Option(
            None,
            "--recipe",
            "-r",
            help="Recipe name (see `mtl recipes list`) or path to a .toml file. "
            "With --resume, defaults to RUN/recipe.toml.",
        ),
        data: Path | None = typer.Option(
            None,
            "--data",
            help="Prepared dataset (overrides \\[data].root) "
            "[default: the recipe's data.root, else $MTL_DATA/<dataset>, else data/<dataset>].",
        ),
        out: Path | None = typer.Option(
            None, "--out", "-o", metavar="RUN", help="Run directory [default: runs/<recipe>/expN]."
        ),
        set_: list[str] = typer.Option(
            [], "--set", help="Override a recipe key, e.g. --set train.lr=0.001 (repeatable)."
        ),
        from_: Path | None = typer.Option(
            None,
            "--from",
            metavar="RUN_OR_CKPT",
            help="Fine-tune a trained model on --data: the architecture and schedule come from the "
            "checkpoint's recipe (a run directory takes its reported checkpoint), the classes from the data; "
            "matching tensors load, heads re-initialise [run directory: runs/finetune-<data>/expN].",
        ),
        weights: Path | None = typer.Option(
            None,
            "--weights",
            help="Start from these weights (a checkpoint or state dict): matching tensors load, "
            "heads whose class count differs are re-initialised (sets model.init_weights).",
        ),
        resume: bool = typer.Option(False, "--resume", help="Continue RUN/checkpoints/last.pt exactly."),
        force: bool = typer.Option(False, "--force", help="Start over in a --out that already holds a run."),
        device: str | None = typer.Option(
            None, "--device", help="auto, cpu, cuda or cuda:N [default: auto, CUDA if available, else CPU]."
        ),
        tensorboard: bool = typer.Option(
            False,
            "--tensorboard",
            help="Also write the logged scalars to RUN/tensorboard/ (needs `pip install "
            "tensorboard`; sets train.tensorboard). RUN/metrics.jsonl is written either way.",
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
        cache: str | None = typer.Option(
            None,
            "--cache",
            metavar="ram|none",
            help="ram: decode the training images and label maps into memory once, before "
            "training (falls back, with a note, when they would not fit); none: read every sample from its files "
            "(sets data.cache) [default: the recipe's data.cache].",
        ),
    ) -> None:
        """Train a model from a recipe; writes RUN/recipe.toml, metrics.jsonl and checkpoints/{last,best}.pt."""
        from mtlcli.engine.data import data_root, require_prepared
        from mtlcli.engine.distributed import broadcast_object, cleanup, init_distributed
        from mtlcli.engine.train import tensorboard_writer, train
        from mtlcli.recipes import load_recipe

        if resume and out is None:
            raise UserError("--resume needs --out RUN: the run directory to continue")
        if from_ is not None and (recipe is not None or weights is not None or resume):
            given = next(o for o, v in (("--recipe", recipe), ("--weights", weights), ("--resume", resume)) if v)
            raise UserError(
                f"--from takes the recipe and the weights from its checkpoint; {given} does too — give one of them"
            )
        if from_ is None and recipe is None:
            if not resume or out is None:
                raise UserError("give a recipe with --recipe NAME|PATH (see `mtl recipes list`)")
            recipe = str(out / "recipe.toml")
            if not Path(recipe).is_file():
                raise UserError(f"{out} has no recipe.toml — give the recipe with --recipe")
        if device is not None:
            from mtlcli.cli.common import resolve_device

            device = resolve_device(device)
        if cache is not None:
            from mtlcli.data.cache import MODES

            if cache not in MODES:
                raise UserError(f"--cache {cache}: valid values are {', '.join(MODES)}")
            set_ = [*set_, f"data.cache={cache}"]
        notes: list[str] = []  # the schedule scaled to a --set train.iterations: said once, below
        if from_ is not None:
            from mtlcli.engine.finetune import finetune_recipe
            from mtlcli.recipes import finish_recipe, resolve

            base, ckpt = finetune_recipe(from_, data)
            resolved = finish_recipe(resolve(base, source=str(ckpt)), set_, source=f"--from {ckpt}", notes=notes)
            name = f"finetune-{(data or Path(data_root(resolved))).expanduser().resolve().name}"
            notes.insert(0, f"fine-tuning the {resolved['model']['name']} of {ckpt} on {data_root(resolved)}")
            ref = name  # names the default run directory, runs/finetune-<data>/expN
        else:
            assert recipe is not None  # --recipe, or RUN/recipe.toml for --resume (above)
            ref = recipe
            resolved = load_recipe(ref, set_, scale_schedule=not resume, notes=notes)
        if data is not None:
            resolved["data"]["root"] = str(data.expanduser().resolve())
        if weights is not None:
            if resume:
                raise UserError(
                    "--weights starts a new run from other weights; --resume continues this run's own — give one"
                )
            resolved["model"]["init_weights"] = str(weights.expanduser().resolve())
        if tensorboard:
            resolved["train"]["tensorboard"] = True
        if resolved["train"]["tensorboard"]:
            tensorboard_writer()  # not installed: one line before any folder is made
        if resume and out is not None:  # nothing to continue is said first, before the data of a run that never was
            check_resumable(out)
        require_prepared(resolved, data_root(resolved))  # the one line naming how to prepare it, before "training ..."

        info = init_distributed(device)
        try:
            # Rank 0 alone looks at the file system, so that all processes agree on one directory.
            decision: tuple[str, str] = ("", "")
            lock = None
            if info.is_main:
                try:
                    run_dir, lock = lock_run_dir(ref, out, resume=resume, force=force)
                    decision = ("ok", str(run_dir))
                except UserError as exc:
                    decision = ("error", str(exc))
            decision = broadcast_object(decision, info)
            if decision[0] == "error":
                raise UserError(decision[1])
            run_dir = Path(decision[1])
            if info.is_main:
                for note in notes:
                    print(note)
                print(
                    f"training {resolved['model'].get('name')} into {run_dir}"
                    + (f" on {info.world_size} processes" if info.distributed else "")
                )
            try:
                result = train(resolved, run_dir, resume=resume, device=device, progress=not quiet)
            except KeyboardInterrupt:
                raise typer.Exit(130) from None
            finally:
                if lock is not None:
                    lock.release()
            if info.is_main:
                _summary(result, run_dir, resolved)
        finally:
            cleanup(info)


def _summary(result: dict, run_dir: Path, recipe: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"{run_dir} — {result['iteration']} iterations"
    table = Table(title=title, show_header=True, min_width=len(title))  # a narrow table would wrap its title
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for k, v in result["losses"].items():
        table.add_row(k, f"{v:.4f}")
    for k, v in result["metrics"].items():
        table.add_row(f"{k} (last eval)", f"{v:.4f}")
    if result["best"]:
        b = result["best"]
        table.add_row(f"best {b['metric']}", f"{b['value']:.4f} at iteration {b['iteration']}")
    Console().print(table)
    from mtlcli.hints import eval_hint

    print(f"checkpoints: {run_dir / 'checkpoints'}  ·  {eval_hint(run_dir, recipe)}")
