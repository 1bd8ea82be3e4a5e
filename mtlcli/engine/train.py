"""The training loop: one plain function, `train(recipe, run_dir)`, that `mtl train` and the quickstart call.

Iteration-based: every iteration takes `train.batch_size` images in total (split over processes and
`accumulate` micro-batches), sums the model's `loss_*` terms times the recipe's loss weights, and makes
one optimiser step at the schedule's learning rate. Stages (`[[train.stages]]`) switch base lr, loss
weights and frozen parameters at their boundaries. Rank 0 writes `RUN/recipe.toml`,
`RUN/metrics.jsonl` (one JSON object per logged step and per evaluation) and `RUN/checkpoints/`.

Exact resume: the data order is a pure function of (seed, sample position) (`TrainSampler`), every
sample's augmentation is seeded by its global position, the DataLoader draws its worker seeds from a
private generator, evaluation runs inside a saved-and-restored RNG state, and checkpoints hold model,
optimiser, schedule, scaler, iteration and every process's RNG state.

Each logged record's `data_wait` is the share of the window's wall time (evaluation and checkpoint
writing left out, as from `images_per_s`) that the loop spent blocked in `next(loader)`; moving the
batch to the device and making its floats count as step time.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from mtlcli.data.overlap import check_no_overlap
from mtlcli.engine.anchors import with_kmeans_anchors
from mtlcli.engine.checkpoint import (
    checkpoint_dir,
    load_checkpoint,
    preserved_rng,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from mtlcli.engine.compat import check_resume
from mtlcli.engine.data import (
    build_datasets,
    collate_fn,
    data_root,
    make_loader,
    ram_cache,
    refuse_wide_semantic,
    to_device,
    training_targets,
)
from mtlcli.engine.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup,
    gather_objects,
    init_distributed,
)
from mtlcli.engine.limits import check_batch_fits
from mtlcli.engine.optim import LRSchedule, apply_freeze, build_optimizer, frozen_modules, train_mode
from mtlcli.engine.rundir import RunLock
from mtlcli.errors import UserError
from mtlcli.hints import resume_command
from mtlcli.recipes import dump_toml, total_iterations
from mtlcli.safety import atomic_write_text, named_write_error


class TrainingDiverged(UserError):
    """A loss became NaN or infinite: training stops instead of continuing on garbage."""


# ------------------------------------------------------------------------------------------------ RNG


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


# ----------------------------------------------------------------------------------------------- model


def with_class_counts(recipe: dict, dataset: Dataset) -> dict:
    """Fill model.num_det_classes / num_seg_classes (without background) from the dataset after the
    label map, where the builder takes them and the recipe does not set them."""
    from mtlcli.models import builder_arguments

    model = dict(recipe["model"])
    valid = builder_arguments(model["name"])
    for key, attr in (("num_det_classes", "det_classes"), ("num_seg_classes", "seg_classes")):
        if key in valid and key not in model and hasattr(dataset, attr):
            model[key] = len(getattr(dataset, attr))
    return {**recipe, "model": model}


def build(recipe: dict) -> nn.Module:
    from mtlcli.models import build_from_recipe

    return build_from_recipe(recipe["model"])


def per_process_batch(train_cfg: dict, world_size: int) -> int:
    """Images per micro-batch per process; `batch_size` is the global batch of one optimiser step."""
    batch, acc = train_cfg["batch_size"], train_cfg["accumulate"]
    if batch % (world_size * acc):
        raise UserError(
            f"train.batch_size = {batch} is not divisible by {world_size} process(es) x train.accumulate = {acc}; "
            f"choose a batch size that is a multiple of {world_size * acc}"
        )
    return batch // (world_size * acc)


def weigh(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> dict[str, torch.Tensor]:
    """The model's `loss_*` terms times the recipe's weights (1 where unnamed)."""
    unknown = sorted(set(weights) - set(losses))
    if unknown:
        raise UserError(
            f"loss_weights name(s) {', '.join(unknown)} that the model does not return; its losses: "
            f"{', '.join(sorted(k for k in losses if k.startswith('loss')))}"
        )
    return {k: v * weights.get(k, 1.0) for k, v in losses.items() if k.startswith("loss")}


# --------------------------------------------------------------------------------------------- display


from mtlcli.engine.console import bar_width  # noqa: E402  (the console helpers of the Display)


class Display:
    """The rich progress line (rank 0): iteration/total, ETA, loss, images/s, then (as the width allows)
    loss terms, lr, data wait and memory — in an 80-column terminal the detail goes first. Periodic
    evaluation pauses the line for its own progress bar and prints its results as a line."""

    def __init__(self, enabled: bool, total: int, start: int, console: Any = None) -> None:
        self.progress = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            bar = BarColumn(bar_width=None)
            self.progress = Progress(
                TextColumn("[bold]train"),
                bar,
                MofNCompleteColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
            )
            bar.bar_width = bar_width(self.progress.console.width)
            self.task = self.progress.add_task("train", total=total, completed=start, info="")
            # in a log file or CI a live bar renders only at the end: print each logged step as a line
            self.lines = not self.progress.console.is_terminal
            self.total = total

    def __enter__(self) -> Display:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, iteration: int, record: dict | None = None) -> None:
        if self.progress is None:
            return
        from mtlcli.engine.console import info_text

        fields: dict[str, Any] = {}
        if record is not None:
            room = self.progress.console.width - (
                bar_width(self.progress.console.width) + 2 * len(str(self.total)) + 24
            )
            fields["info"] = info_text(record, room if not self.lines else 10_000)
        self.progress.update(self.task, completed=iteration, **fields)
        if self.lines and fields:
            self.progress.console.print(f"train {iteration}/{self.total}  {fields['info']}")

    def evaluating(self) -> Any:
        """A context for periodic evaluation: the train line stops, evaluation shows its own bar."""
        from mtlcli.engine.console import paused

        return paused(self.progress)

    def print(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text)

    def note(self, text: str) -> None:
        """A line the user needs even without the display (then on stderr), never wrapped, so that a
        command in it can be copied."""
        if self.progress is not None:
            self.progress.console.print(text, soft_wrap=True, markup=False)
        else:
            print(text, file=sys.stderr)


def memory_mb(device: torch.device) -> float:
    """Peak memory: CUDA allocator peak on a GPU, the process's peak resident size on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _record_upto(line: str, iteration: int) -> bool:
    """A whole metrics.jsonl record of an iteration up to `iteration` (False for a partial line)."""
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return (
        isinstance(record, dict)
        and isinstance(record.get("iteration", 0), int)
        and record.get("iteration", 0) <= iteration
    )


class MetricsLog:
    """`RUN/metrics.jsonl` (rank 0), the record of every logged step and evaluation; with `tensorboard`,
    the same scalars in RUN/tensorboard/ too (`tensorboard_writer`)."""

    def __init__(self, run_dir: Path, enabled: bool, resume_from: int | None, tensorboard: bool = False) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled, self.tb = enabled, None
        if not enabled:
            return
        if resume_from is not None and self.path.is_file():
            # Entries past the checkpoint belong to iterations that will run again: drop them, and a line a
            # killed run left half-written (it is the record of an iteration that runs again too).
            keep = [ln for ln in self.path.read_text(errors="replace").splitlines() if _record_upto(ln, resume_from)]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))
        elif resume_from is None:
            atomic_write_text(self.path, "")
        if tensorboard:
            self.tb = tensorboard_writer()(
                str(run_dir / "tensorboard"), purge_step=resume_from + 1 if resume_from is not None else None
            )

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:  # a full disk raises ENOSPC without the file's name: give it
            raise named_write_error(exc, self.path) from None
        if self.tb is not None:
            flat = {**record.get("losses", {}), **record.get("metrics", {})}
            for key in ("loss", "lr", "images_per_s", "data_wait"):
                if key in record:
                    flat[key] = record[key]
            for key, value in flat.items():
                self.tb.add_scalar(f"{record['type']}/{key}", value, record["iteration"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def tensorboard_writer():
    """torch's `SummaryWriter` class; without the tensorboard package, a UserError that says how to get it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "--tensorboard (train.tensorboard = true) needs the tensorboard package, which is not "
            "installed — pip install tensorboard, or train without it (RUN/metrics.jsonl has every "
            "logged value)"
        ) from None
    return SummaryWriter


# ----------------------------------------------------------------------------------------------- train


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
            result = _train(recipe, Path(run_dir), resume, info, progress)
        barrier(info)  # no rank tears the process group down while another still uses it (gloo aborts then)
        return result
    finally:
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[2], flags[3]
        cleanup(info)


def _train(recipe: dict, run_dir: Path, resume: bool, info: DistInfo, progress: bool) -> dict:
    cfg, ev = recipe["train"], recipe["eval"]
    device, main = info.device, info.is_main
    total = total_iterations(recipe)
    acc = cfg["accumulate"]
    micro = per_process_batch(cfg, info.world_size)
    if cfg["tensorboard"]:
        tensorboard_writer()  # missing: refused before anything is built or written
    configure_determinism(cfg["deterministic"], device)
    seed_everything(cfg["seed"] + info.rank)

    train_ds, val_ds = build_datasets(recipe, data_root(recipe))
    check_no_overlap(recipe, train_ds, val_ds)  # refuse to train on evaluation images
    recipe = with_class_counts(recipe, train_ds)
    recipe = with_kmeans_anchors(recipe, data_root(recipe))  # anchors = "kmeans": from the train split
    model = build(recipe)
    from mtlcli.engine.finetune import check_class_counts, init_weights
    from mtlcli.engine.modelcard import model_card, weights_only_state

    card = model_card(train_ds)
    check_class_counts(recipe, card)
    if not resume:
        init_weights(model, recipe, card, print if main else None)
    train_ds.targets, train_ds.compact = training_targets(recipe, model), True  # decode only what the loss reads
    refuse_wide_semantic(train_ds, train_ds.targets)  # more than 255 seg classes: one line, not a wrong loss
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    if cfg["sync_bn"] and info.distributed and device.type == "cpu":
        raise UserError(
            "train.sync_bn = true needs GPUs (PyTorch's SyncBatchNorm has no CPU kernel) — "
            "set --set train.sync_bn=false for distributed training on CPUs"
        )
    if cfg["sync_bn"] and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    check_batch_fits(micro, getattr(model, "input_size", None), device, "train.batch_size per micro-batch")
    optimizer = build_optimizer(model, cfg)
    schedule = LRSchedule(cfg)
    use_cuda_amp = device.type == "cuda" and cfg["amp"] != "none"
    if cfg["amp"] != "none" and not use_cuda_amp and main:  # documented as a no-op on a CPU: say so
        print(f"note: train.amp = {cfg['amp']} works on CUDA only; training in float32 on {device}", file=sys.stderr)
    scaler = torch.amp.GradScaler(device.type, enabled=use_cuda_amp and cfg["amp"] == "fp16")
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16 if cfg["amp"] == "bf16" else torch.float16))
        if use_cuda_amp
        else contextlib.nullcontext
    )

    ckpt_dir = checkpoint_dir(run_dir)
    start, best, rng = 0, {}, None
    if resume:
        state = load_checkpoint(ckpt_dir / "last.pt")
        check_resume(state, recipe, train_ds, ckpt_dir / "last.pt", data_root(recipe), model)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        start, best = int(state["iteration"]), dict(state.get("best", {}))
        rngs = state.get("rng", [])
        rng = rngs[info.rank] if len(rngs) == info.world_size else None
        if start >= total:
            raise UserError(
                f"{run_dir} already finished {start} of {total} iterations — raise train.iterations to train "
                f"longer, e.g. `{resume_command(run_dir, '--set', f'train.iterations={2 * total}')}`"
            )
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        from mtlcli.provenance import header

        atomic_write_text(run_dir / "recipe.toml", header() + dump_toml(recipe))  # whole or not at all
    log = MetricsLog(run_dir, main, start if resume else None, tensorboard=cfg["tensorboard"])
    if recipe["data"].get("cache") == "ram":  # filled before the loader forks its workers, which then share it
        train_ds.ram = ram_cache(train_ds, main, progress)
    loader = make_loader(
        train_ds,
        micro_batch=micro,
        workers=cfg["workers"],
        seed=cfg["seed"],
        info=info,
        start=start * acc * micro,
        collate=collate_fn(),
    )
    if rng is not None:
        set_rng_state(rng)
    elif resume:  # another world size: carry on with fresh, still reproducible seeds
        seed_everything(cfg["seed"] + info.rank + start)

    best_metric = ev["best_metric"] or (ev["metrics"][0] if ev["metrics"] else "")
    state_at = {"iteration": start}

    def checkpoint(iteration: int, *, names: tuple[str, ...] = ("last.pt",), rng: dict | None = None) -> None:
        # After an interrupt the other processes may be gone: no collective, rank 0's RNG only.
        rngs = [rng] if rng is not None else gather_objects(rng_state(), info)
        if not main:
            return
        core = model.module if isinstance(model, DistributedDataParallel) else model
        state = {
            "model": core.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict(),
            "iteration": iteration,
            "rng": rngs,
            "best": best,
            "recipe": recipe,
            "classes": card,
        }
        for name in names:  # best.pt: weights only; last.pt: everything --resume needs
            save_checkpoint(ckpt_dir / name, weights_only_state(state) if name == "best.pt" else state)
        state_at["iteration"] = iteration

    def evaluate_now(iteration: int) -> dict[str, float]:
        from mtlcli.engine.evaluate import evaluate

        with preserved_rng(), display.evaluating() as shown:
            result = evaluate(model, val_ds, ev["metrics"], device=device, batch_size=ev["batch_size"], progress=shown)
        train_mode(model, frozen_mods)
        # Rank 0's numbers decide best.pt on every process, so that all take the same branch.
        metrics = broadcast_object({k: float(v) for k, v in result["metrics"].items()}, info)
        log.write({"type": "eval", "iteration": iteration, "metrics": metrics})
        display.print(f"eval {iteration}/{total}  " + "  ".join(f"{k} {100 * v:.2f}%" for k, v in metrics.items()))
        return metrics

    stage = None
    ddp: Any = model  # the model, or its DistributedDataParallel wrapper in a multi-process run
    frozen_mods: list[nn.Module] = []  # the stage's frozen modules run in eval mode (BN statistics fixed)
    window: defaultdict[str, float] = defaultdict(float)
    window_iters, wait, t_window = 0, 0.0, time.perf_counter()
    last_record: dict[str, Any] = {}
    last_metrics: dict[str, float] = {}
    it = start
    rng_at_start = rng_state()
    with Display(progress and main, total, start) as display:
        try:
            while it < total:
                current = schedule.stage_at(it)
                if current is not stage:
                    stage = current
                    frozen = apply_freeze(model, stage.freeze, trainable)
                    frozen_mods[:] = frozen_modules(model, frozen)
                    if not any(p.requires_grad for p in model.parameters()):
                        raise UserError(
                            f"stage {stage.name!r} freezes every parameter — nothing would train; "
                            "narrow its freeze patterns"
                        )
                    # DDP records which parameters take gradients when it is built: rebuild per stage.
                    ddp = (
                        DistributedDataParallel(
                            model,
                            device_ids=[device.index] if device.type == "cuda" else None,
                            find_unused_parameters=True,
                        )
                        if info.distributed
                        else model
                    )
                    if len(schedule.stages) > 1:
                        display.print(
                            f"stage {stage.name}: {stage.iterations} iterations, lr {stage.lr:g}, "
                            f"{len(frozen)} frozen parameter tensors"
                        )
                lr = schedule.step(optimizer, it)
                train_mode(model, frozen_mods)
                terms: dict[str, torch.Tensor] = {}
                for m in range(acc):
                    t0 = time.perf_counter()
                    images, targets = next(loader)
                    wait += time.perf_counter() - t0
                    images, targets = to_device(images, targets, device)
                    sync = contextlib.nullcontext() if not info.distributed or m == acc - 1 else ddp.no_sync()
                    with sync:
                        try:
                            with autocast():
                                weighted = weigh(ddp(images, targets), stage.loss_weights)
                            if not weighted:
                                raise UserError(
                                    f"model {recipe['model']['name']!r} returned no loss_* terms in "
                                    "training mode — it does not follow the DESIGN.md §4 contract"
                                )
                            scaler.scale(sum(weighted.values()) / acc).backward()
                        except torch.OutOfMemoryError:
                            raise _oom_error(cfg, micro, images, model, device, it) from None
                    for k, v in weighted.items():
                        terms[k] = terms.get(k, 0.0) + v.detach().float() / acc
                values = all_reduce_mean(torch.stack(list(terms.values())), info).cpu()
                if not torch.isfinite(values).all():
                    optimizer.zero_grad(set_to_none=True)
                    raise _diverged(
                        it + 1,
                        dict(zip(terms, values.tolist(), strict=True)),
                        ckpt_dir,
                        state_at["iteration"],
                        cfg["lr"],
                    )
                if cfg["grad_clip"] > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], cfg["grad_clip"])
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                it += 1
                rng_at_start = rng_state()  # as iteration `it` starts: what an interrupt checkpoint restores

                window_iters += 1
                for k, v in zip(terms, values.tolist(), strict=True):
                    window[k] += v
                if it % cfg["log_interval"] == 0 or it == total:
                    elapsed = time.perf_counter() - t_window
                    losses = {k: v / window_iters for k, v in window.items()}
                    last_record = {
                        "type": "train",
                        "iteration": it,
                        "stage": stage.name,
                        "loss": sum(losses.values()),
                        "losses": losses,
                        "lr": lr,
                        "images_per_s": window_iters * cfg["batch_size"] / elapsed,
                        "data_wait": min(1.0, wait / elapsed),
                        "memory_mb": memory_mb(device),
                    }
                    log.write(last_record)
                    display.update(it, last_record)
                    window.clear()
                    window_iters, wait, t_window = 0, 0.0, time.perf_counter()
                else:
                    display.update(it)
                t_pause = time.perf_counter()
                if val_ds is not None and ((ev["interval"] and it % ev["interval"] == 0) or it == total):
                    last_metrics = evaluate_now(it)
                    value = last_metrics.get(best_metric)
                    if value is not None and (not best or value > best["value"]):
                        best = {"metric": best_metric, "value": value, "iteration": it}
                        checkpoint(it, names=("best.pt",))
                if it % cfg["checkpoint_interval"] == 0 or it == total:
                    checkpoint(it)
                # evaluation and checkpoints stay out of the window's images/s and data-wait share
                t_window += time.perf_counter() - t_pause
        except KeyboardInterrupt:
            checkpoint(it, rng=rng_at_start)
            if main:  # shown with --quiet too: it says how to go on
                display.note(
                    f"interrupted at iteration {it}: saved {ckpt_dir / 'last.pt'} — continue with "
                    f"`{resume_command(run_dir)}`"
                )
            raise
        finally:
            log.close()
    return {"iteration": it, "losses": last_record.get("losses", {}), "metrics": last_metrics, "best": best}


def _diverged(iteration: int, terms: dict[str, float], ckpt_dir: Path, last_good: int, lr: float) -> TrainingDiverged:
    shown = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
    fixes = "lower train.lr, add train.warmup_iters or train.grad_clip"
    if (ckpt_dir / "last.pt").is_file():
        lower = resume_command(ckpt_dir.parent, "--set", f"train.lr={lr / 10:g}")
        what = (
            f"last good checkpoint: {ckpt_dir / 'last.pt'} (iteration {last_good}); {fixes} and resume from it, "
            f"e.g. `{lower}`"
        )
    else:
        what = f"no checkpoint was written yet; {fixes} and start again"
    return TrainingDiverged(f"non-finite loss at iteration {iteration} ({shown}); training stopped — {what}")


def _oom_error(cfg: dict, micro: int, images: list, model: nn.Module, device: torch.device, it: int) -> UserError:
    size = getattr(model, "input_size", None) or tuple(images[0].shape[-2:])
    return UserError(
        f"out of memory on {device} at iteration {it + 1} with {micro} image(s) per process per micro-batch "
        f"(train.batch_size = {cfg['batch_size']}, accumulate = {cfg['accumulate']}) at input size "
        f"{size[0]}x{size[1]} — raise train.accumulate (e.g. --set train.accumulate={cfg['accumulate'] * 2}), "
        "lower train.batch_size or use a smaller input size"
    )
