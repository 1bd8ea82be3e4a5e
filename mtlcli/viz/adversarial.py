"""`mtl viz adversarial`: an iterative gradient attack on the dense prediction (ladder-densenet-and-ssd.txt §4.2).

The paper seeks a small perturbation r with f(x + r) != f(x) and x + r in [0, 1]^m by propagating the
adversarial gradient to the input. We solve it as projected gradient ascent under an L-infinity budget
(Madry et al. 2018), which makes the budget a hard guarantee:
    untargeted   ascend the per-pixel cross-entropy of `sem_seg` against the model's own clean prediction
                 (every pixel is pushed away from the class it had)
    --target-class K   descend the cross-entropy towards class K at every pixel
    each step    r <- clip(r + a * sign(grad), -eps, eps), then x + r clipped to [0, 1]; a = 2.5 eps / steps
The image is attacked in its own pixel frame (0..1 RGB, the model resizes inside), so the perturbation is
one a user could save and feed back. Works for every model with a `sem_seg` output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import Tensor, nn

from mtlcli.errors import UserError


def _sem_seg(model: nn.Module, image: Tensor) -> Tensor:
    output = model([image])[0]
    if "sem_seg" not in output:
        raise UserError(f"{type(model).__name__} gives no sem_seg output; the adversarial attack needs a segmentation "
                        "model (the run's model only detects)")
    return output["sem_seg"]


def _step(model: nn.Module, x: Tensor, r: Tensor, goal: Tensor, alpha: float, eps: float, targeted: bool) -> Tensor:
    """One projected signed-gradient step on the perturbation `r` (same shape as the image `x`)."""
    r = r.detach().requires_grad_(True)
    log_scores = _sem_seg(model, (x + r).clamp(0, 1)).clamp_min(1e-12).log()
    ce = F.nll_loss(log_scores[None], goal[None])
    # untargeted: move away from the clean prediction; targeted: towards class K
    (grad,) = torch.autograd.grad(-ce if targeted else ce, r)
    with torch.no_grad():
        r = (r + alpha * grad.sign()).clamp(-eps, eps)
        return (x + r).clamp(0, 1) - x  # stay a valid image


def attack(model: nn.Module, image: Tensor, *, eps: float = 8 / 255, steps: int = 10, step_size: float | None = None,
           target_class: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Attack `model`'s segmentation of `image` [3, H, W] float 0..1 (its own frame).

    Returns {"adversarial" [3, H, W] 0..1, "perturbation" [3, H, W] (adversarial - image, |r| <= eps),
    "before" / "after" [H, W] int64 argmax class maps, "l2" (Euclidean norm of r over all values, 0..1 units),
    "linf" (max |r|), "changed" (share of pixels whose class changed, 0..1), "on_target" (share of pixels
    predicted as `target_class` after, or None)}.
    """
    if not eps > 0:
        raise UserError(f"--eps must be positive (a change per pixel value in 0..1 units, e.g. 0.03), got {eps}")
    if eps > 1:
        raise UserError(f"--eps {eps} is larger than the whole 0..1 pixel range; use e.g. 0.03 (about 8/255)")
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    was_training = model.training
    model.eval()
    try:
        x = image.detach().float()
        with torch.no_grad():
            scores = _sem_seg(model, x)
        before = scores.argmax(0)
        num_classes = scores.shape[0]
        if target_class is not None and not 0 <= target_class < num_classes:
            raise UserError(f"--target-class {target_class} is out of range: the model has classes 0..{num_classes - 1}")
        goal = torch.full_like(before, target_class) if target_class is not None else before
        r = torch.zeros_like(x)
        bar = Progress(transient=True, disable=not progress)
        task = bar.add_task("adversarial attack", total=steps)
        with bar:
            for _ in range(steps):
                r = _step(model, x, r, goal, alpha, eps, targeted=target_class is not None)
                bar.advance(task)
        adversarial = (x + r).clamp(0, 1).detach()
        with torch.no_grad():
            after = _sem_seg(model, adversarial).argmax(0)
    finally:
        model.train(was_training)
    r = (adversarial - x).detach()
    return {
        "adversarial": adversarial.cpu(), "perturbation": r.cpu(), "before": before.cpu(), "after": after.cpu(),
        "l2": float(r.flatten().norm(p=2)), "linf": float(r.abs().max()),
        "changed": float((after != before).float().mean()),
        "on_target": float((after == target_class).float().mean()) if target_class is not None else None,
    }


def render_attack(image: Tensor, result: dict[str, Any], palette: Sequence[Sequence[int]], eps: float) -> Tensor:
    """Five panels side by side, uint8 [3, H, 5W]: original | perturbation (amplified: -eps..eps -> 0..255,
    grey = unchanged) | adversarial image | prediction before | prediction after (palette colours)."""
    from mtlcli.viz.draw import colorize_semantic, side_by_side, to_uint8

    amplified = (result["perturbation"] / (2 * eps) + 0.5).clamp(0, 1)
    return side_by_side([to_uint8(image), to_uint8(amplified), to_uint8(result["adversarial"]),
                         colorize_semantic(result["before"], palette), colorize_semantic(result["after"], palette)])


def render_adversarial(model: nn.Module, image_path: str | Path, out: str | Path, palette: Sequence[Sequence[int]], *,
                       eps: float = 8 / 255, steps: int = 10, target_class: int | None = None, force: bool = False,
                       device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Attack the image file `image_path`, write the five panels to `out/adversarial_<stem>.png` (plus the
    adversarial image alone as `adversarial_<stem>_image.png`, to feed back to a model) and return the
    `attack` numbers with "path" and "image_path"."""
    from mtlcli.viz.draw import save_png
    from mtlcli.viz.predictions import check_free, read_image_file, safe_name

    image = read_image_file(image_path)
    out = Path(out)
    tag = f"_to{target_class}" if target_class is not None else ""
    panel_path = out / f"adversarial_{safe_name(Path(image_path).stem)}{tag}.png"
    image_out = panel_path.with_name(panel_path.stem + "_image.png")
    check_free([panel_path, image_out], force)
    result = attack(model, image.to(device), eps=eps, steps=steps, target_class=target_class, progress=progress)
    save_png(render_attack(image, result, palette, eps), panel_path)
    save_png(result["adversarial"], image_out)
    return {**result, "path": panel_path, "image_path": image_out}
