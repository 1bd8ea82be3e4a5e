"""The training loop: one plain function, `train(recipe, run_dir)`, that `mtl train` and the quickstart call.

Iteration-based: every iteration takes `train.batch_size` images in total (split over processes and
`accumulate` micro-batches), sums the model's `loss_*` terms times the recipe's loss weights, and makes
one optimiser step at the schedule's learning rate. Stages (`[[train.stages]]`) switch base lr, loss
weights and frozen parameters at their boundaries. Rank 0 writes `RUN/recipe.toml`,
`RUN/metrics.jsonl` (one JSON object per logged step and per evaluation) and `RUN/checkpoints/`.

`_train` reads as the page of its steps: `prepare_run` and `build_model_and_data`
(`mtlcli.engine.setup`), `build_optimisation` (`mtlcli.engine.optim`), `resume_run`, `open_loader`,
then per stage `enter_stage` and `train_stage` (whose iterations are `forward_backward` of
`mtlcli.engine.step`, the optimiser step, `log_step`, `evaluate_and_keep`, `write_checkpoints`), and
`finish`.

Exact resume: the data order is a pure function of (seed, sample position) (`TrainSampler`), every
sample's augmentation is seeded by its global position, the DataLoader draws its worker seeds from a
private generator, evaluation runs inside a saved-and-restored RNG state, and checkpoints hold model,
optimiser, schedule, scaler, iteration and every process's RNG state.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtlcli.engine.checkpoint import (
    checkpoint_dir,
    load_checkpoint,
    preserved_rng,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from mtlcli.engine.compat import check_resume
from mtlcli.engine.console import Display
from mtlcli.engine.data import collate_fn, data_root, make_loader, ram_cache
from mtlcli.engine.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    cleanup,
    gather_objects,
    init_distributed,
    wrap_ddp,
)
from mtlcli.engine.optim import Optimisation, Stage, build_optimisation, freeze_for_stage, train_mode
from mtlcli.engine.rundir import RunLock, discard_unstarted, holds_files, write_run_recipe
from mtlcli.engine.runlog import LogWindow, MetricsLog, memory_mb, tensorboard_writer
from mtlcli.engine.setup import (
    Built,
    Plan,
    build,
    build_model_and_data,
    prepare_run,
    seed_everything,
    with_class_counts,
)
from mtlcli.engine.step import TrainingDiverged, diverged, forward_backward, weigh
from mtlcli.errors import UserError
from mtlcli.hints import resume_command
from mtlcli.recipes import selection_split

__all__ = [
    "Display",
    "MetricsLog",
    "TrainingDiverged",
    "build",
    "memory_mb",
    "seed_everything",
    "tensorboard_writer",
    "train",
    "weigh",
    "with_class_counts",
]


def train(
    recipe: dict, run_dir: Path, *, resume: bool = False, device: str | None = None, progress: bool = True
) -> dict:
    """Train the recipe's model into `run_dir` (created if needed); under torchrun, one process each.

    `recipe` is a resolved recipe (`mtlcli.recipes.load_recipe`). With `resume`, continue exactly from
    `run_dir/checkpoints/last.pt`. Returns {"iteration", "losses" (last logged mean of each term),
    "metrics" (last evaluation), "best" ({"metric", "value", "iteration"} or {})}.
    Raises UserError for bad input, TrainingDiverged on a non-finite loss; on Ctrl-C writes last.pt and
    re-raises KeyboardInterrupt.
    """
    info = init_distributed(device)
    # The determinism switches are process-wide: give the caller back what it had.
    flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        with RunLock(run_dir) if info.is_main else contextlib.nullcontext():  # one process per run directory
            fresh = info.is_main and not resume and not holds_files(run_dir)
            try:
                result = _train(recipe, Path(run_dir), resume, info, progress)
            except BaseException:
                if fresh:  # failed before its first checkpoint: no half run left behind
                    discard_unstarted(run_dir)
                raise
        barrier(info)  # no rank tears the process group down while another still uses it (gloo aborts then)
        return result
    finally:
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[2], flags[3]
        cleanup(info)


def _train(recipe: dict, run_dir: Path, resume: bool, info: DistInfo, progress: bool) -> dict:
    plan = prepare_run(recipe, info)  # checks, determinism, seeds: nothing built yet
    recipe, built = build_model_and_data(recipe, plan, info, resume)
    opt = build_optimisation(built.model, plan.cfg, info.device, info.is_main)
    start, best, rng = resume_run(recipe, run_dir, built, opt, info, plan.total) if resume else (0, {}, None)
    if info.is_main:
        write_run_recipe(run_dir, recipe)
    log = MetricsLog(run_dir, info.is_main, start if resume else None, tensorboard=plan.cfg["tensorboard"])
    loader = open_loader(recipe, built, plan, info, start, progress)
    if rng is not None:
        set_rng_state(rng)
    elif resume:  # another world size: carry on with fresh, still reproducible seeds
        seed_everything(plan.cfg["seed"] + info.rank + start)
    run = Run(recipe, run_dir, info, plan, built, opt, log, loader, iteration=start, best=best, saved_at=start)
    with Display(progress and info.is_main, plan.total, start) as run.display:
        try:
            for stage in opt.schedule.stages_from(start):
                enter_stage(run, stage)
                train_stage(run, stage)
        except KeyboardInterrupt:
            interrupted(run)
            raise
        finally:
            log.close()
    return finish(run)


# --------------------------------------------------------------------------------------------- the steps


@dataclass
class Run:
    """One process's training run between its steps: what was built, and what the loop moves on."""

    recipe: dict
    run_dir: Path
    info: DistInfo
    plan: Plan
    built: Built
    opt: Optimisation
    log: MetricsLog
    loader: Iterator
    iteration: int = 0
    best: dict[str, Any] = field(default_factory=dict)  # {"metric", "value", "iteration"} of best.pt
    saved_at: int = 0  # the iteration last.pt holds
    rng_at_start: dict = field(default_factory=rng_state)  # as `iteration` starts: what an interrupt saves
    window: LogWindow = field(default_factory=LogWindow)
    display: Display = None  # type: ignore[assignment]  # set by _train's `with`
    net: nn.Module | None = None  # the model, or its DDP wrapper for the current stage
    frozen: list[nn.Module] = field(default_factory=list)  # the stage's frozen modules (run in eval mode)
    last_record: dict[str, Any] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def model(self) -> nn.Module:
        return self.built.model


def resume_run(
    recipe: dict, run_dir: Path, built: Built, opt: Optimisation, info: DistInfo, total: int
) -> tuple[int, dict, dict | None]:
    """Load RUN/checkpoints/last.pt into the model and the optimisation, after checking that it fits.
    Returns (iteration, best, this process's RNG state or None under another world size)."""
    path = checkpoint_dir(run_dir) / "last.pt"
    state = load_checkpoint(path)
    check_resume(state, recipe, built.train_ds, path, data_root(recipe), built.model)
    built.model.load_state_dict(state["model"])
    opt.load_state_dict(state)
    start, best = int(state["iteration"]), dict(state.get("best", {}))
    rngs = state.get("rng", [])
    if start >= total:
        raise UserError(
            f"{run_dir} already finished {start} of {total} iterations — raise train.iterations to train "
            f"longer, e.g. `{resume_command(run_dir, '--set', f'train.iterations={2 * total}')}`"
        )
    return start, best, rngs[info.rank] if len(rngs) == info.world_size else None


def open_loader(recipe: dict, built: Built, plan: Plan, info: DistInfo, start: int, progress: bool) -> Iterator:
    """The endless micro-batch iterator from the sample iteration `start` begins with (RAM cache filled
    first, so that the loader's workers share it)."""
    if recipe["data"].get("cache") == "ram":
        built.train_ds.ram = ram_cache(built.train_ds, info.is_main, progress)
    return make_loader(
        built.train_ds,
        micro_batch=plan.micro,
        workers=plan.cfg["workers"],
        seed=plan.cfg["seed"],
        info=info,
        start=start * plan.accumulate * plan.micro,
        collate=collate_fn(),
    )


def enter_stage(run: Run, stage: Stage) -> None:
    """Freeze what the stage freezes (its modules in eval mode) and wrap the model for DDP anew."""
    frozen, run.frozen = freeze_for_stage(run.model, stage, run.built.trainable)
    run.net = wrap_ddp(run.model, run.info)
    if len(run.opt.schedule.stages) > 1:
        run.display.print(
            f"stage {stage.name}: {stage.iterations} iterations, lr {stage.lr:g}, "
            f"{len(frozen)} frozen parameter tensors"
        )


def train_stage(run: Run, stage: Stage) -> None:
    """The stage's iterations: one optimiser step each, then log, evaluate (keeping best.pt) and checkpoint."""
    cfg, opt = run.plan.cfg, run.opt
    while run.iteration < min(stage.end, run.plan.total):
        lr = opt.schedule.step(opt.optimizer, run.iteration)
        train_mode(run.model, run.frozen)
        assert run.net is not None
        terms = forward_backward(
            run.net, run.loader, stage.loss_weights, opt, run.plan, run.info, run.window, run.iteration,
            run.recipe["model"]["name"],
        )  # fmt: skip
        if not all(math.isfinite(v) for v in terms.values()):
            opt.optimizer.zero_grad(set_to_none=True)
            raise diverged(run.iteration + 1, terms, checkpoint_dir(run.run_dir), run.saved_at, cfg["lr"])
        opt.step(run.model, cfg["grad_clip"])
        run.iteration += 1
        run.rng_at_start = rng_state()  # as the next iteration starts: what an interrupt checkpoint restores
        log_step(run, stage, terms, lr)
        with run.window.pause():  # evaluation and checkpoints stay out of the window's images/s and data wait
            evaluate_and_keep(run)
            if run.iteration % cfg["checkpoint_interval"] == 0 or run.iteration == run.plan.total:
                write_checkpoints(run)


def log_step(run: Run, stage: Stage, terms: dict[str, float], lr: float) -> None:
    """Add the step to the window; every `log_interval` (and at the end) write and show its record."""
    run.window.add(terms)
    it, cfg = run.iteration, run.plan.cfg
    if it % cfg["log_interval"] == 0 or it == run.plan.total:
        run.last_record = run.window.record(it, stage.name, lr, cfg["batch_size"], run.info.device)
        run.log.write(run.last_record)
        run.display.update(it, run.last_record)
    else:
        run.display.update(it)


def evaluate_and_keep(run: Run) -> None:
    """At every `eval.interval` and at the end: evaluate on data.val_split, and keep best.pt by the
    selection split's score (`mtlcli.recipes.selection_split`: never test*), within the last stage only —
    never a checkpoint from before the last stage's weights moved."""
    it, ev = run.iteration, run.plan.ev
    if run.built.val_ds is None or not ((ev["interval"] and it % ev["interval"] == 0) or it == run.plan.total):
        return
    run.last_metrics = evaluate_split(run, run.built.val_ds, "eval")
    select = selection_split(run.recipe)
    if not select or it <= run.opt.schedule.stages[-1].start:
        return
    scores = run.last_metrics if run.built.select_ds is None else evaluate_split(run, run.built.select_ds, select)
    best_metric = ev["best_metric"] or (ev["metrics"][0] if ev["metrics"] else "")
    value = scores.get(best_metric)
    if value is not None and (not run.best or value > run.best["value"]):
        run.best = {"metric": best_metric, "value": value, "iteration": it}
        if select != run.recipe["data"]["val_split"]:
            run.best["split"] = select
        write_checkpoints(run, names=("best.pt",))


def evaluate_split(run: Run, dataset: Any, kind: str) -> dict[str, float]:
    """Evaluate the model on `dataset` (RNG untouched, frozen modules back in eval mode after), log and
    show the numbers. `kind`: "eval" for data.val_split, else the name of the selection split."""
    from mtlcli.engine.evaluate import evaluate

    ev, it = run.plan.ev, run.iteration
    with preserved_rng(), run.display.evaluating() as shown:
        result = evaluate(
            run.model, dataset, ev["metrics"], device=run.info.device, batch_size=ev["batch_size"], progress=shown
        )
    train_mode(run.model, run.frozen)
    # Rank 0's numbers decide best.pt on every process, so that all take the same branch.
    metrics = broadcast_object({k: float(v) for k, v in result["metrics"].items()}, run.info)
    record = {"type": "eval", "iteration": it, "metrics": metrics}
    if kind != "eval":  # the selection split's numbers: a record of their own, apart from the curves
        record = {"type": "select", "split": kind, "iteration": it, "metrics": metrics}
    run.log.write(record)
    label = "eval" if kind == "eval" else f"select ({kind})"
    run.display.print(f"{label} {it}/{run.plan.total}  " + "  ".join(f"{k} {100 * v:.2f}%" for k, v in metrics.items()))
    return metrics


def write_checkpoints(run: Run, *, names: tuple[str, ...] = ("last.pt",), rng: dict | None = None) -> None:
    """last.pt (everything --resume needs) or best.pt (the weights and the model card), by rank 0."""
    from mtlcli.engine.modelcard import weights_only_state

    # After an interrupt the other processes may be gone: no collective, rank 0's RNG only.
    rngs = [rng] if rng is not None else gather_objects(rng_state(), run.info)
    if not run.info.is_main:
        return
    state = {
        "model": run.model.state_dict(),  # the bare model, never the DDP wrapper
        **run.opt.state_dict(),
        "iteration": run.iteration,
        "rng": rngs,
        "best": run.best,
        "recipe": run.recipe,
        "classes": run.built.card,
    }
    for name in names:
        path = checkpoint_dir(run.run_dir) / name
        save_checkpoint(path, weights_only_state(state) if name == "best.pt" else state)
    run.saved_at = run.iteration


def interrupted(run: Run) -> None:
    """Ctrl-C: last.pt at the iteration about to run (its RNG as it started), and how to go on."""
    write_checkpoints(run, rng=run.rng_at_start)
    if run.info.is_main:  # shown with --quiet too: it says how to go on
        run.display.note(
            f"interrupted at iteration {run.iteration}: saved {checkpoint_dir(run.run_dir) / 'last.pt'} — continue "
            f"with `{resume_command(run.run_dir)}`"
        )


def finish(run: Run) -> dict:
    """What `train` returns: the iteration reached, the last logged losses, the last evaluation, best.pt's."""
    return {
        "iteration": run.iteration,
        "losses": run.last_record.get("losses", {}),
        "metrics": run.last_metrics,
        "best": run.best,
    }
