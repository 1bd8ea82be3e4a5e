"""One optimiser step of training, in two named halves: `forward_backward` (the micro-batches of one
step through the model, the weighted loss terms back, their means over processes) and
`Optimisation.step` (`mtlcli.engine.optim`: clip, step, zero). A non-finite loss stops training with
`diverged`, an out-of-memory error with `oom_error`, each one line that says what to change.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mtlcli.engine.data import to_device
from mtlcli.engine.distributed import DistInfo, all_reduce_mean
from mtlcli.engine.optim import Optimisation
from mtlcli.engine.runlog import LogWindow
from mtlcli.engine.setup import Plan
from mtlcli.errors import UserError
from mtlcli.hints import resume_command


class TrainingDiverged(UserError):
    """A loss became NaN or infinite: training stops instead of continuing on garbage."""


def weigh(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> dict[str, torch.Tensor]:
    """The model's `loss_*` terms times the recipe's weights (1 where unnamed)."""
    unknown = sorted(set(weights) - set(losses))
    if unknown:
        raise UserError(
            f"loss_weights name(s) {', '.join(unknown)} that the model does not return; its losses: "
            f"{', '.join(sorted(k for k in losses if k.startswith('loss')))}"
        )
    return {k: v * weights.get(k, 1.0) for k, v in losses.items() if k.startswith("loss")}


def forward_backward(
    net: Any,
    loader: Iterator,
    loss_weights: dict[str, float],
    opt: Optimisation,
    plan: Plan,
    info: DistInfo,
    window: LogWindow,
    iteration: int,
    model_name: str,
) -> dict[str, float]:
    """The `accumulate` micro-batches of one step through `net` (the model, or its DDP wrapper) and their
    weighted losses backward (gradients synchronised on the last one only). Returns each loss term's mean
    over the micro-batches and processes; the time blocked in `next(loader)` goes to `window.wait`."""
    acc, device = plan.accumulate, info.device
    terms: dict[str, torch.Tensor] = {}
    for m in range(acc):
        t0 = time.perf_counter()
        images, targets = next(loader)
        window.wait += time.perf_counter() - t0
        images, targets = to_device(images, targets, device)
        sync = contextlib.nullcontext() if not info.distributed or m == acc - 1 else net.no_sync()
        with sync:
            try:
                with opt.autocast():
                    weighted = weigh(net(images, targets), loss_weights)
                if not weighted:
                    raise UserError(
                        f"model {model_name!r} returned no loss_* terms in training mode — it does not follow "
                        "the DESIGN.md §4 contract"
                    )
                loss = cast(torch.Tensor, sum(weighted.values()))
                opt.scaler.scale(loss / acc).backward()
            except torch.OutOfMemoryError:
                raise oom_error(plan.cfg, plan.micro, images, net, device, iteration) from None
        for k, v in weighted.items():
            terms[k] = terms.get(k, 0.0) + v.detach().float() / acc
    values = all_reduce_mean(torch.stack(list(terms.values())), info).cpu()
    return dict(zip(terms, values.tolist(), strict=True))


def diverged(iteration: int, terms: dict[str, float], ckpt_dir: Path, last_good: int, lr: float) -> TrainingDiverged:
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


def oom_error(cfg: dict, micro: int, images: list, model: nn.Module, device: torch.device, it: int) -> UserError:
    core = model.module if isinstance(model, DistributedDataParallel) else model
    size = getattr(core, "input_size", None) or tuple(images[0].shape[-2:])
    return UserError(
        f"out of memory on {device} at iteration {it + 1} with {micro} image(s) per process per micro-batch "
        f"(train.batch_size = {cfg['batch_size']}, accumulate = {cfg['accumulate']}) at input size "
        f"{size[0]}x{size[1]} — raise train.accumulate (e.g. --set train.accumulate={cfg['accumulate'] * 2}), "
        "lower train.batch_size or use a smaller input size"
    )
