"""`mtl viz adversarial`: adversarial examples for the dense prediction (ladder-densenet-and-ssd.txt §4.2).

The paper poses the problem as
    min ||r||_2   s.t.  f(x + r) != y,   x + r in [0, 1]^m
and solves it "by propagating the adversarial gradients to the input image and optimizing with gradient
descent". That is the default here (`attack_l2`, `--norm l2`). For a segmentation f(x) is a class map, so
"the prediction changes" needs a rule (inferred, the paper is silent): the *chosen pixels* (every pixel,
or those predicted as `source_class`) count as flipped when their class differs from the clean
prediction (or, with `target_class`, equals it), and the attack succeeds when the flipped share of the
chosen pixels reaches `flip_rate` (default 0.95, inferred). The optimisation (inferred details, in the
manner of DDN, Rony et al. 2019, with the per-pixel margin loss of DAG, Xie et al. 2017):
    loss        sum over the chosen pixels not flipped yet of the log-score margin
                (own class - best other class; target: best other - target), divided by the chosen count
    search      r <- r - a * g / ||g||_2 with a = step_rms * sqrt(m) (default 1/255 per value), clipped so that
                x + r stays in [0, 1], until the first success (at most `steps` steps)
    refine      then `refine_steps` more steps (DDN's norm control): shrink the allowed norm eps by
                (1 - gamma) while the image is adversarial, grow it by (1 + gamma) while not, step along the
                normalised gradient by eps * beta_k (beta: cosine from 0.5 to 0.01), project r onto the
                eps-sphere, clip to [0, 1]; the adversarial image with the smallest ||r||_2 seen is kept
The L-infinity attack of earlier versions stays available (`attack_linf`, `--norm linf`): projected
gradient ascent under a hard budget (Madry et al. 2018), r <- clip(r + a * sign(grad), -eps, eps),
a = 2.5 eps / steps.
Images are attacked in their own pixel frame (0..1 RGB, the model resizes inside), so the perturbation is
one a user could save and feed back. Works for every model with a `sem_seg` output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import Tensor, nn

from mtlcli.errors import UserError
from mtlcli.models.base import eval_mode

NORMS = ("l2", "linf")


def _sem_seg(model: nn.Module, image: Tensor) -> Tensor:
    output = model([image])[0]
    if "sem_seg" not in output:
        raise UserError(
            f"{type(model).__name__} gives no sem_seg output; the adversarial attack needs a segmentation "
            "model (the run's model only detects)"
        )
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


def _check_class(value: int | None, num_classes: int, option: str) -> None:
    if value is not None and not 0 <= value < num_classes:
        raise UserError(f"{option} {value} is out of range: the model has classes 0..{num_classes - 1}")


def _chosen_pixels(before: Tensor, source_class: int | None, target_class: int | None) -> Tensor:
    """The pixels the attack must flip: all, or those predicted `source_class`; never those already `target_class`."""
    chosen = torch.ones_like(before, dtype=torch.bool) if source_class is None else before == source_class
    if target_class is not None:
        chosen &= before != target_class
    if not chosen.any():
        what = f"predicted as class {source_class}" if source_class is not None else "to change"
        extra = f" that is not already class {target_class}" if target_class is not None else ""
        raise UserError(f"no pixel of this image is {what}{extra}; choose another --source-class or image")
    return chosen


def _flipped(pred: Tensor, before: Tensor, chosen: Tensor, target_class: int | None) -> Tensor:
    return chosen & ((pred == target_class) if target_class is not None else (pred != before))


def _numbers(
    x: Tensor, adversarial: Tensor, before: Tensor, after: Tensor, chosen: Tensor, target_class: int | None
) -> dict[str, Any]:
    r = (adversarial - x).detach()
    flipped = _flipped(after, before, chosen, target_class)
    return {
        "adversarial": adversarial.cpu(),
        "perturbation": r.cpu(),
        "before": before.cpu(),
        "after": after.cpu(),
        "l2": float(r.flatten().norm(p=2)),
        "linf": float(r.abs().max()),
        "changed": float((after != before).float().mean()),
        "flip_rate": float(flipped.sum()) / max(int(chosen.sum()), 1),
        "chosen": int(chosen.sum()),
        "on_target": float((after == target_class).float().mean()) if target_class is not None else None,
        "target_class": target_class,
    }


def attack_l2(
    model: nn.Module,
    image: Tensor,
    *,
    steps: int = 100,
    refine_steps: int = 20,
    flip_rate: float = 0.95,
    source_class: int | None = None,
    target_class: int | None = None,
    step_rms: float = 1 / 255,
    gamma: float = 0.05,
    progress: bool = False,
) -> dict[str, Any]:
    """The paper's problem: the smallest L2 perturbation of `image` [3, H, W] 0..1 that flips the chosen
    pixels (module docstring). At most `steps` search steps, then `refine_steps` norm-reducing ones.

    Returns {"norm": "l2", "adversarial" [3, H, W] 0..1 (the successful image with the smallest ||r||_2, else
    the last one), "perturbation", "before" / "after" [H, W] class maps, "l2", "linf", "changed" (share of all
    pixels whose class changed), "flip_rate" (share of the chosen pixels flipped), "chosen" (their count),
    "flipped" (flip_rate reached the goal), "goal", "steps" (steps taken), "first_flip" (the number of steps
    the first success took, or None), "on_target", "target_class", "source_class"}.
    """
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    if refine_steps < 0:
        raise UserError(f"--refine-steps must be 0 or more, got {refine_steps}")
    if not 0 < flip_rate <= 1:
        raise UserError(f"--flip-rate is a share of the chosen pixels, in (0, 1], got {flip_rate}")
    if not step_rms > 0:
        raise UserError(f"the step size must be positive, got {step_rms}")
    with eval_mode(model):
        x = image.detach().float()
        with torch.no_grad():
            scores = _sem_seg(model, x)
        before = scores.argmax(0)
        num_classes = scores.shape[0]
        _check_class(source_class, num_classes, "--source-class")
        _check_class(target_class, num_classes, "--target-class")
        chosen = _chosen_pixels(before, source_class, target_class)
        n_chosen = chosen.sum()
        own = before[None]
        alpha = step_rms * math.sqrt(x.numel())
        r = torch.zeros_like(x)
        best: Tensor | None = None
        best_norm = math.inf
        first_flip: int | None = None
        eps = 0.0
        k = 0  # gradient steps applied so far
        bar = Progress(transient=True, disable=not progress)
        task = bar.add_task("adversarial attack (L2)", total=steps)
        with bar:
            while True:
                r = r.detach().requires_grad_(True)
                log_scores = _sem_seg(model, x + r).clamp_min(1e-12).log()
                flipped = _flipped(log_scores.detach().argmax(0), before, chosen, target_class)
                success = float(flipped.sum()) >= flip_rate * float(n_chosen) - 1e-9
                if success:
                    norm = float(r.detach().norm())
                    if norm < best_norm:
                        best, best_norm = r.detach().clone(), norm
                    if first_flip is None:
                        first_flip, eps = k, norm
                        bar.update(task, total=k + refine_steps, completed=k)
                if (first_flip is None and k >= steps) or (first_flip is not None and k >= first_flip + refine_steps):
                    break
                active = chosen & ~flipped
                if target_class is not None:
                    others = log_scores.clone()
                    others[target_class] = -math.inf
                    margin = others.max(0).values - log_scores[target_class]
                else:
                    others = log_scores.scatter(0, own, -math.inf)
                    margin = log_scores.gather(0, own)[0] - others.max(0).values
                if active.any():
                    (grad,) = torch.autograd.grad((margin * active).sum() / n_chosen, r)
                else:  # every chosen pixel flipped: only the norm is left to reduce
                    grad = torch.zeros_like(x)
                with torch.no_grad():
                    direction = grad / grad.norm().clamp_min(1e-12)
                    if first_flip is None:
                        r = r - alpha * direction
                    else:
                        beta = 0.01 + 0.245 * (1 + math.cos(math.pi * (k - first_flip) / max(refine_steps, 1)))
                        eps *= (1 - gamma) if success else (1 + gamma)
                        r = r - eps * beta * direction
                        r = r * (eps / r.norm().clamp_min(1e-12))
                    r = (x + r).clamp(0, 1) - x
                k += 1
                bar.advance(task)
        taken = k
        final = best if best is not None else r.detach()
        adversarial = (x + final).clamp(0, 1).detach()
        with torch.no_grad():
            after = _sem_seg(model, adversarial).argmax(0)
    result = _numbers(x, adversarial, before, after, chosen, target_class)
    result.update(
        norm="l2",
        flipped=result["flip_rate"] >= flip_rate - 1e-9,
        goal=flip_rate,
        steps=taken,
        first_flip=first_flip,
        source_class=source_class,
    )
    return result


def attack_linf(
    model: nn.Module,
    image: Tensor,
    *,
    eps: float = 8 / 255,
    steps: int = 10,
    step_size: float | None = None,
    target_class: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Projected gradient ascent under an L-infinity budget `eps` on `image` [3, H, W] 0..1.

    Returns the keys of `attack_l2` ("flip_rate" over every pixel not already `target_class`; "flipped"
    always True, "first_flip" None: this attack runs its `steps` whatever happens) with "norm": "linf",
    "eps".
    """
    if not eps > 0:
        raise UserError(f"--eps must be positive (a change per pixel value in 0..1 units, e.g. 0.03), got {eps}")
    if eps > 1:
        raise UserError(f"--eps {eps} is larger than the whole 0..1 pixel range; use e.g. 0.03 (about 8/255)")
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    with eval_mode(model):
        x = image.detach().float()
        with torch.no_grad():
            scores = _sem_seg(model, x)
        before = scores.argmax(0)
        _check_class(target_class, scores.shape[0], "--target-class")
        goal = torch.full_like(before, target_class) if target_class is not None else before
        chosen = before != target_class if target_class is not None else torch.ones_like(before, dtype=torch.bool)
        r = torch.zeros_like(x)
        bar = Progress(transient=True, disable=not progress)
        task = bar.add_task("adversarial attack (Linf)", total=steps)
        with bar:
            for _ in range(steps):
                r = _step(model, x, r, goal, alpha, eps, targeted=target_class is not None)
                bar.advance(task)
        adversarial = (x + r).clamp(0, 1).detach()
        with torch.no_grad():
            after = _sem_seg(model, adversarial).argmax(0)
    result = _numbers(x, adversarial, before, after, chosen, target_class)
    result.update(norm="linf", eps=eps, flipped=True, goal=None, steps=steps, first_flip=None, source_class=None)
    return result


def attack(
    model: nn.Module,
    image: Tensor,
    *,
    norm: str = "l2",
    eps: float = 8 / 255,
    steps: int | None = None,
    target_class: int | None = None,
    progress: bool = False,
    **l2_options: Any,
) -> dict[str, Any]:
    """`attack_l2` (the paper's problem, the default) or `attack_linf` (`norm="linf"`, budget `eps`).
    `steps` defaults to 100 search steps (L2) or 10 (Linf); `l2_options` go to `attack_l2`."""
    if norm == "l2":
        return attack_l2(
            model,
            image,
            steps=100 if steps is None else steps,
            target_class=target_class,
            progress=progress,
            **l2_options,
        )
    if norm == "linf":
        if l2_options:
            raise UserError(f"{', '.join(sorted(l2_options))} belong to the L2 attack; drop them with --norm linf")
        return attack_linf(
            model, image, eps=eps, steps=10 if steps is None else steps, target_class=target_class, progress=progress
        )
    raise UserError(f"--norm {norm!r} is not one of {', '.join(NORMS)}")


def panel_titles(result: dict[str, Any], class_names: Sequence[str] | None = None) -> tuple[list[str], str]:
    """The five panel titles and the caption line with the attack's numbers."""

    def name(k: int | None) -> str:
        if k is None:
            return ""
        return class_names[k] if class_names and 0 <= k < len(class_names) else f"class {k}"

    scale = _amplification(result)
    titles = [
        "original",
        f"perturbation x{scale:.0f}",
        "adversarial image",
        "prediction before",
        "prediction after"
        + (f" (target {name(result['target_class'])})" if result["target_class"] is not None else ""),
    ]
    if result["norm"] == "l2":
        chosen = f"pixels of {name(result['source_class'])}" if result.get("source_class") is not None else "pixels"
        status = (
            f"flipped {100 * result['flip_rate']:.1f}% of {result['chosen']} {chosen} "
            f"(goal {100 * result['goal']:.0f}%)"
            if result["flipped"]
            else f"NOT flipped: {100 * result['flip_rate']:.1f}% of {chosen} (goal {100 * result['goal']:.0f}%)"
        )
        caption = (
            f"min L2: ‖r‖₂ = {result['l2']:.3f}, ‖r‖∞ = {result['linf']:.4f} ({255 * result['linf']:.1f}/255); "
            f"{status}; {result['steps']} steps"
        )
    else:
        caption = (
            f"L∞ budget {255 * result['eps']:.3g}/255: ‖r‖₂ = {result['l2']:.3f}, ‖r‖∞ = "
            f"{result['linf']:.4f}; {100 * result['flip_rate']:.1f}% of pixels flipped; {result['steps']} steps"
        )
    return titles, caption


def _amplification(result: dict[str, Any]) -> float:
    """How much the perturbation panel enlarges r: 0.5 / max|r| (so the largest change is full scale)."""
    linf = max(result["linf"], 1e-6)
    return 0.5 / linf


def render_attack(
    image: Tensor, result: dict[str, Any], palette: Sequence[Sequence[int]], class_names: Sequence[str] | None = None
) -> Tensor:
    """The attack as one picture, uint8 [3, H', W'], two rows of titled panels so that it stays readable at a
    screen's width:
        original           | perturbation (amplified: the largest |r| full scale, grey = 0) | adversarial image
        prediction before  | pixels whose class changed (red)                               | prediction after
    each prediction under the image it was made on (palette colours), then the numbers (‖r‖₂, ‖r‖∞, flipped
    share, steps) on a caption line and a legend of the classes the two predictions show."""
    from mtlcli.viz.draw import MIN_HEIGHT, colorize_semantic, legend_entries, titled_row, to_uint8, with_legend

    amplified = (result["perturbation"] * _amplification(result) + 0.5).clamp(0, 1)
    titles, caption = panel_titles(result, class_names)
    before, after = colorize_semantic(result["before"], palette), colorize_semantic(result["after"], palette)
    top = titled_row(
        [to_uint8(image), to_uint8(amplified), to_uint8(result["adversarial"])], titles[:3], min_height=MIN_HEIGHT
    )
    changed = (result["before"] != result["after"]).cpu()
    flips = torch.where(
        changed,
        torch.tensor([220, 40, 40], dtype=torch.uint8)[:, None, None],
        torch.tensor([235, 235, 235], dtype=torch.uint8)[:, None, None],
    )
    bottom = titled_row(
        [before, flips, after],
        [titles[3], f"changed class: {100 * float(changed.float().mean()):.1f}% of pixels", titles[4]],
        caption,
        min_height=MIN_HEIGHT,
    )
    names = list(class_names) if class_names else [f"class {k}" for k in range(len(palette))]
    entries = legend_entries([result["before"], result["after"]], [], names, [], palette)
    return with_legend([top, bottom], entries, int(before.shape[-2]))


def render_adversarial(
    model: nn.Module,
    image_path: str | Path,
    out: str | Path,
    palette: Sequence[Sequence[int]],
    *,
    norm: str = "l2",
    eps: float = 8 / 255,
    steps: int | None = None,
    target_class: int | None = None,
    class_names: Sequence[str] | None = None,
    force: bool = False,
    device: str = "cpu",
    progress: bool = True,
    **l2_options: Any,
) -> dict[str, Any]:
    """Attack the image file `image_path`, write the titled panels to `out/adversarial_<stem>.png` (plus the
    adversarial image alone as `adversarial_<stem>_image.png`, to feed back to a model) and return the
    `attack` numbers with "path" and "image_path"."""
    from mtlcli.viz.draw import save_png
    from mtlcli.viz.predictions import check_free, read_image_file, safe_name

    image = read_image_file(image_path)
    out = Path(out)
    tag = (f"_to{target_class}" if target_class is not None else "") + ("_linf" if norm == "linf" else "")
    panel_path = out / f"adversarial_{safe_name(Path(image_path).stem)}{tag}.png"
    image_out = panel_path.with_name(panel_path.stem + "_image.png")
    check_free([panel_path, image_out], force)
    result = attack(
        model,
        image.to(device),
        norm=norm,
        eps=eps,
        steps=steps,
        target_class=target_class,
        progress=progress,
        **l2_options,
    )
    save_png(render_attack(image, result, palette, class_names), panel_path)
    save_png(result["adversarial"], image_out)
    return {**result, "path": panel_path, "image_path": image_out}
