"""`mtl viz features`: what a unit of the network responds to (ladder-densenet-and-ssd.txt §4.1).

Activation maximisation (Erhan et al. 2009): start from noise, follow the gradient of a unit's activation
with respect to the input image, and perturb the image between steps so that the pattern survives small
image transformations (the paper's Fig. 4d: jitter, scaling, rotation and blur; each can be switched off,
Fig. 4c). The unit is
  --layer NAME              the mean of the whole output of a module of `model.named_modules()`
  --layer NAME --channel C  the mean of one channel (feature map) of that output
  --layer NAME --class K    the same, channel K named by a segmentation class (a classifier layer)
  --class K                 the mean log-score of class K in the model's `sem_seg` output, or, for a
                            classifier, its class score (the logit, before softmax: Simonyan et al. 2014)
Besides our runs, any torchvision classification network can be visualised from a local weights file
(`--classifier densenet121 --weights densenet121-a639ec97.pth`): the paper (§4.1, Fig. 4) shows a DenseNet-121
fine-tuned for VOC 2007 classification. `load_classifier` wraps it in `ClassifierAdapter` so that it
takes images like our models (a list of [3, H, W] 0..1, ImageNet mean/std applied inside) and its layers
keep torchvision's names (`features.denseblock4`, `classifier`).
The image is optimised in the 0..1 RGB frame at the network's input size and fed through the model's own
preprocessing (DESIGN.md §4), so the result is an input the model could be given. A forward hook captures
the layer's output and stops the forward pass there.

Also the first convolution's filters as an image grid (the paper's Fig. 4a).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import make_grid

from mtlcli.errors import UserError
from mtlcli.models.base import eval_mode

Objective = Callable[[Tensor], Tensor]  # image [3, H, W] float 0..1 -> scalar to maximise


class _Stop(Exception):
    """Raised by the capture hook: nothing after the chosen layer needs to run."""


def layer_names(model: nn.Module) -> list[str]:
    """Every named sub-module, in definition order (what --layer accepts)."""
    return [name for name, _ in model.named_modules() if name]


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module called `name`; an unknown name is a UserError listing close and valid names."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    names = layer_names(model)
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    shown = names if len(names) <= 40 else [n for n in names if n.count(".") <= 1][:40]
    more = f" ... ({len(names)} in all; --list-layers prints every one)" if len(shown) < len(names) else ""
    raise UserError(f"{type(model).__name__} has no layer {name!r}{hint}; valid layers: {', '.join(shown)}{more}")


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def layer_objective(
    model: nn.Module, name: str, channel: int | None = None, expect_channels: int | None = None
) -> Objective:
    """Mean activation of layer `name` (of channel `channel` when given) for one image [3, H, W] 0..1.

    `expect_channels` (the class count, for --class) checks that the layer has one channel per class.
    """
    module = find_layer(model, name)

    def objective(image: Tensor) -> Tensor:
        captured: dict[str, Any] = {}

        def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
            captured["out"] = out
            raise _Stop

        handle = module.register_forward_hook(hook)
        try:
            model([image])
        except _Stop:
            pass
        finally:
            handle.remove()
        if "out" not in captured:
            raise UserError(
                f"layer {name!r} does not run when the model sees an image (an unused or training-only "
                "module); choose another --layer"
            )
        out = captured["out"]
        if not isinstance(out, Tensor):
            subs = [n for n in layer_names(module) if "." not in n][:12]
            raise UserError(
                f"layer {name!r} returns a {type(out).__name__}, not one feature tensor; choose one of its "
                f"sub-modules: {', '.join(f'{name}.{s}' for s in subs) or 'none'}"
            )
        if out.ndim < 2:
            raise UserError(f"layer {name!r} gives a {out.ndim}-d output; choose a layer with channels")
        if expect_channels is not None and out.shape[1] != expect_channels:
            raise UserError(
                f"layer {name!r} has {out.shape[1]} channels, not one per class ({expect_channels}); "
                "drop --layer to maximise the model's sem_seg output, or use --channel"
            )
        if channel is not None:
            if not 0 <= channel < out.shape[1]:
                raise UserError(
                    f"--channel {channel} is out of range: layer {name!r} has channels 0..{out.shape[1] - 1}"
                )
            out = out[:, channel]
        return out.float().mean()

    return objective


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ClassifierAdapter(nn.Module):
    """A torchvision classifier `net` called like our models: `model([image, ...])` -> [{"logits": [C]}, ...].

    Images are [3, H, W] floats 0..1 of one size, normalised with `mean`/`std` inside (ImageNet's by
    default, as torchvision's classifiers expect). The children of `net` are registered under their own
    names, so `named_modules()`, `state_dict()` and --layer names are torchvision's.
    """

    def __init__(
        self,
        net: nn.Module,
        input_size: tuple[int, int] = (224, 224),
        class_names: list[str] | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.net: nn.Module
        self.mean: Tensor
        self.std: Tensor
        for name, child in net.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "net", net)  # not a second registration of the same modules
        self.input_size = tuple(input_size)
        self.class_names = class_names
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ClassifierAdapter:
        super().train(mode)
        self.net.training = mode
        return self

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        x = (torch.stack(list(images)) - self.mean) / self.std
        return [{"logits": row} for row in self.net(x)]


# torchvision's published DenseNet files say "denselayer1.norm.1.weight" where the modules say "norm1"
_OLD_DENSENET_KEY = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")


def _classifier_names() -> list[str]:
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def load_classifier(
    name: str, weights: str | Path, *, input_size: tuple[int, int] = (224, 224), device: str = "cpu"
) -> ClassifierAdapter:
    """torchvision's classification network `name` (e.g. "densenet121") with the state dict in `weights`
    (a local .pth: torchvision's published files, old DenseNet key names included, or {"model"/"state_dict":
    ...}). The class count comes from the file (1000 = ImageNet, named by torchvision's category list; any
    other count, e.g. 20 for a VOC fine-tune, is named "class k"). Every parameter must be in the file."""
    import torchvision.models

    names = _classifier_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(
            f"--classifier {name!r} is not a torchvision classification network{hint}; e.g. densenet121, "
            "resnet50, vgg16"
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(f"--weights {path} does not exist — give the path of the classifier's .pth state dict")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"--weights {path} is not a readable PyTorch state dict ({type(exc).__name__}: {exc})"
        ) from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"--weights {path} does not hold a state dict of tensors — give a torchvision .pth file")
    state = {_OLD_DENSENET_KEY.sub(r"\1\2.", k.removeprefix("module.")): v for k, v in state.items()}
    net = torchvision.models.get_model(name, weights=None)
    own = net.state_dict()
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    num_classes = 1000
    if mismatched:  # a fine-tuned head: the class count is the first dimension of the last layer's weight
        last = [k for k in own if own[k].ndim == 2][-1]
        if set(mismatched) <= {last, last.removesuffix("weight") + "bias"}:
            num_classes = int(state[last].shape[0])
            net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        else:
            raise UserError(
                f"--weights {path} does not fit {name} (shape mismatch in {', '.join(mismatched[:3])}) — "
                "check --classifier"
            )
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        what = (
            f"{len(missing)} parameters missing ({', '.join(missing[:3])})"
            if missing
            else f"{len(unexpected)} unknown keys ({', '.join(unexpected[:3])})"
        )
        raise UserError(f"--weights {path} is not a whole {name}: {what} — check --classifier and the file")
    class_names = None
    if num_classes == 1000:
        try:
            class_names = list(torchvision.models.get_model_weights(name).DEFAULT.meta["categories"])
        except (KeyError, ValueError, AttributeError):
            class_names = None
    model = ClassifierAdapter(net, input_size, class_names or [f"class {k}" for k in range(num_classes)])
    return model.to(device).eval()


def class_objective(model: nn.Module, k: int) -> Objective:
    """Mean log-score of segmentation class `k` over the image, from the model's `sem_seg` [C, H, W]; for a
    classifier (a "logits" output, `ClassifierAdapter`) the score of class `k` before softmax."""

    def objective(image: Tensor) -> Tensor:
        output = model([image])[0]
        if "logits" in output:
            if not 0 <= k < output["logits"].shape[0]:
                raise UserError(
                    f"--class {k} is out of range: the classifier has classes 0..{output['logits'].shape[0] - 1}"
                )
            return output["logits"][k].float()
        if "sem_seg" not in output:
            raise UserError(
                f"{type(model).__name__} gives no sem_seg output, which --class needs; use --layer NAME "
                "[--channel C] instead"
            )
        scores = output["sem_seg"]
        if not 0 <= k < scores.shape[0]:
            raise UserError(f"--class {k} is out of range: the model has classes 0..{scores.shape[0] - 1}")
        return scores[k].float().clamp_min(1e-12).log().mean()

    return objective


def maximize_activation(
    objective: Objective,
    size: tuple[int, int],
    *,
    steps: int = 100,
    lr: float = 0.05,
    jitter: int = 4,
    scale: bool = True,
    rotate: bool = True,
    blur: bool = True,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Gradient ascent on `objective` from noise; returns {"image": [3, H, W] float 0..1, "before", "after"
    (objective of the start and the end image, measured without perturbation), "history" (per step)}.

    Each step: the image is shifted by up to `jitter` pixels (circularly), scaled by 0.95..1.05 and rotated
    by -5..5 degrees (where switched on) inside the graph, the gradient of the objective is normalised by
    its mean magnitude and applied with step `lr`, and every 4th step a 3x3 Gaussian blur (sigma 0.5)
    smooths away the high frequencies that plain ascent produces. The image stays in 0..1.
    """
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    x = (0.5 + 0.1 * torch.randn(3, h, w, generator=gen)).clamp(0, 1).to(device)
    with torch.no_grad():
        before = float(objective(x))
    x.requires_grad_(True)
    history: list[float] = []

    def rand(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=gen))

    from rich.progress import Progress

    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("activation maximisation", total=steps)
        for step in range(steps):
            view = x
            if jitter > 0:
                dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen))
                view = torch.roll(view, shifts=(dy, dx), dims=(-2, -1))
            if scale or rotate:
                view = TF.affine(
                    view,
                    angle=rand(-5.0, 5.0) if rotate else 0.0,
                    translate=[0.0, 0.0],
                    scale=rand(0.95, 1.05) if scale else 1.0,
                    shear=[0.0, 0.0],
                    interpolation=InterpolationMode.BILINEAR,
                )
            value = objective(view)
            (grad,) = torch.autograd.grad(value, x)  # the weights' gradients are never needed
            with torch.no_grad():
                x += lr * grad / (grad.abs().mean() + 1e-12)
                if blur and (step + 1) % 4 == 0:
                    x.copy_(TF.gaussian_blur(x, kernel_size=[3, 3], sigma=[0.5, 0.5]))
                x.clamp_(0, 1)
            history.append(float(value.detach()))
            bar.advance(task)
    x = x.detach()
    with torch.no_grad():
        after = float(objective(x))
    return {"image": x.cpu(), "before": before, "after": after, "history": history}


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first Conv2d that sees the image (3 input channels), else the first Conv2d at all."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError(f"{type(model).__name__} has no Conv2d layer; there are no filters to draw")
    rgb = [(n, m) for n, m in convs if m.in_channels == 3]
    return (rgb or convs)[0]


def filter_grid(weight: Tensor, nrow: int = 8, cell: int = 32) -> Tensor:
    """Conv filters [O, I, k, k] -> uint8 image grid [3, H, W]: the first three input channels as RGB (one
    channel as grey), each filter stretched to 0..1 on its own, enlarged by nearest neighbour to about
    `cell` pixels, 2-pixel white gaps. With O filters: rows = ceil(O / nrow), cols = min(O, nrow),
    H = rows * (s + 2) + 2 and W = cols * (s + 2) + 2 for s = k * max(1, cell // k)."""
    w = weight.detach().float().cpu()
    w = w[:, :3] if w.shape[1] >= 3 else w[:, :1].expand(-1, 3, -1, -1)
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    hi = w.amax(dim=(1, 2, 3), keepdim=True)
    w = (w - lo) / (hi - lo).clamp_min(1e-12)
    k = w.shape[-1]
    w = F.interpolate(w, scale_factor=max(1, cell // k), mode="nearest")
    grid = make_grid(w, nrow=min(nrow, w.shape[0]), padding=2, pad_value=1.0)
    return (grid * 255).round().to(torch.uint8)


def render_features(
    model: nn.Module,
    out: str | Path,
    *,
    layer: str | None = None,
    channel: int | None = None,
    seg_class: int | None = None,
    class_name: str | None = None,
    size: tuple[int, int] | None = None,
    steps: int = 100,
    lr: float = 0.05,
    jitter: int = 4,
    scale: bool = True,
    rotate: bool = True,
    blur: bool = True,
    seed: int = 0,
    num_classes: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Activation maximisation of the chosen unit and the first convolution's filters, as PNGs in `out`:
      features_<unit>.png        the optimised image under a title naming the unit, with the objective
                                 before (noise) and after in a caption (enlarged to a readable size)
      features_<unit>_image.png  the optimised image alone at the network input size [3, H, W] (an input
                                 the model could be given)
      filters_<conv>.png         the filter grid under its title (kept when it exists, redrawn with `force`)
    Returns {"image" (the titled PNG), "raw", "filters" (path or None when kept), "filters_path", "before",
    "after", "unit" (a description), "conv", "titles"}. `num_classes` lets --layer with --class check the
    layer has one channel per class."""
    from mtlcli.viz.draw import save_png, titled_row
    from mtlcli.viz.predictions import check_free, safe_name

    if channel is not None and seg_class is not None:
        raise UserError("give --channel C or --class K, not both")
    if layer is None and seg_class is None:
        raise UserError("say which unit to visualise: --layer NAME [--channel C], or --class K")
    if channel is not None and layer is None:
        raise UserError("--channel needs --layer NAME (the layer whose channel to maximise)")
    label = class_name or (str(seg_class) if seg_class is not None else "")
    is_classifier = isinstance(model, ClassifierAdapter)
    if layer is not None:
        objective = layer_objective(
            model,
            layer,
            channel if seg_class is None else seg_class,
            expect_channels=None if seg_class is None else num_classes,
        )
        unit = (
            f"layer {layer}"
            + (f" channel {channel}" if channel is not None else "")
            + (f" class {label}" if seg_class is not None else "")
        )
        stem = (
            safe_name(layer)
            + (f"_c{channel}" if channel is not None else "")
            + (f"_class_{safe_name(label)}" if seg_class is not None else "")
        )
        measure = "mean activation"
    else:
        objective = class_objective(model, int(seg_class))  # type: ignore[arg-type]
        unit = f"{'classifier' if is_classifier else 'sem_seg'} class {label}"
        stem = f"class_{safe_name(label)}"
        measure = "class score (logit)" if is_classifier else "mean log-score"
    if size is None:
        size = tuple(getattr(model, "input_size", (224, 224)))
    out = Path(out)
    image_path = out / f"features_{stem}.png"
    raw_path = out / f"features_{stem}_image.png"
    check_free([image_path, raw_path], force)
    conv_name, conv = first_conv(model)
    filters_path = out / f"filters_{safe_name(conv_name)}.png"

    with eval_mode(model):
        result = maximize_activation(
            objective,
            size,
            steps=steps,
            lr=lr,
            jitter=jitter,
            scale=scale,
            rotate=rotate,
            blur=blur,
            device=_device_of(model),
            seed=seed,
            progress=progress,
        )
    regularised = [n for n, on in (("jitter", jitter > 0), ("scale", scale), ("rotate", rotate), ("blur", blur)) if on]
    title = f"{type(model.net if is_classifier else model).__name__}: {unit}"
    caption = (
        f"{measure} {result['before']:.3g} (noise) -> {result['after']:.3g}\n{steps} steps, "
        f"{'+'.join(regularised) or 'no regularisation'}"
    )
    save_png(titled_row([result["image"]], [title], caption, min_height=256), image_path)
    save_png(result["image"], raw_path)
    wrote_filters = force or not filters_path.exists()
    w = conv.weight
    filters_title = f"{conv_name}: {w.shape[0]} filters {w.shape[-2]}x{w.shape[-1]}"
    if wrote_filters:
        save_png(titled_row([filter_grid(w)], [filters_title], min_height=128), filters_path)
    return {
        "image": image_path,
        "raw": raw_path,
        "filters": filters_path if wrote_filters else None,
        "filters_path": filters_path,
        "before": result["before"],
        "after": result["after"],
        "unit": unit,
        "conv": conv_name,
        "titles": [title, caption, filters_title],
    }
