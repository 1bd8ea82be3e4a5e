"""One short-training helper for the model tests (the registry's overfit sweep, DATNet's and SA-FPN's
short runs): a few optimiser steps of a model in train mode on fixed images and targets."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def short_run(
    model: nn.Module,
    images: list[Tensor],
    targets: list[dict[str, Tensor]],
    steps: int,
    *,
    lr: float = 0.01,
    optimizer: str = "sgd",
    measure: bool = False,
    anneal: bool = False,
) -> tuple[float, float]:
    """Train `model` for `steps` steps (SGD with momentum 0.9, or Adam) on the same batch.

    Returns the total loss before and after. With `measure`, both are extra forward passes under the
    same seed (so a two-stage model samples the same anchors / RoIs each time); otherwise they are the
    losses of the first and the last step. With `anneal`, the last fifth of the steps runs at a tenth of
    the rate, so that the run ends settled rather than wherever the last large step left it."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer = (
        torch.optim.Adam(params, lr=lr, fused=True)
        if optimizer == "adam"
        else torch.optim.SGD(params, lr=lr, momentum=0.9)
    )
    model.train()

    done = 0

    def total(step: bool) -> float:
        nonlocal done
        if step and anneal and done == int(0.8 * steps):
            for group in opt.param_groups:
                group["lr"] = lr / 10
        if measure:
            torch.manual_seed(0)
        loss = sum(model(images, targets).values())
        if step:
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
        return loss.item()

    if measure:
        before = total(step=False)
        for _ in range(steps):
            total(step=True)
        return before, total(step=False)
    history = [total(step=True) for _ in range(steps)]
    return history[0], history[-1]
