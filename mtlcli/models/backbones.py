"""Loading ImageNet weights into torchvision backbones: from torchvision's hub when online, or from a
local file. Without network and without a file the builder fails with a clear message, never silently
trains from scratch."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtlcli.errors import UserError


def load_pretrained(
    module: nn.Module,
    pretrained: bool | str | Path,
    weights: Any,
    strict: bool = False,
    rename: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> None:
    """Load ImageNet weights into `module` (a torchvision classification network or part of it).

    pretrained: False (nothing), True (torchvision's `weights` enum entry, downloaded once into the
    torch hub cache; `weights=None` means torchvision publishes none for this network), or a path to a
    local state dict (`.pth`, as torchvision publishes them). `rename` maps the loaded keys to the
    module's names (e.g. old torchvision DenseNet keys). Keys the module lacks (e.g. `fc.*` of a trunk
    without its head) are ignored; shape mismatches are an error.
    """
    if pretrained is False or pretrained is None or pretrained == "" or str(pretrained).lower() == "false":
        return
    if pretrained is True or str(pretrained).lower() == "true":
        if weights is None:
            raise UserError(
                f"torchvision publishes no ImageNet weights for {type(module).__name__}; "
                'pass pretrained_backbone="/path/to/weights.pth" or set it to false'
            )
        try:
            # torch hub announces a download on stderr ("Downloading: ..."): offline that line would come
            # before our own one-line error, so it is held back
            with contextlib.redirect_stderr(io.StringIO()):
                state = weights.get_state_dict(progress=False, check_hash=False)
        except Exception as exc:  # URLError, socket errors, ... — only the message matters to the user
            raise UserError(
                f"could not download the ImageNet weights {weights} ({type(exc).__name__}: {exc}); "
                'without network, pass pretrained_backbone="/path/to/weights.pth" or set it to false'
            ) from None
    else:
        path = Path(str(pretrained)).expanduser()
        if not path.is_file():
            raise UserError(
                f"pretrained backbone file {path} does not exist — give the path of a torchvision .pth state dict"
            )
        try:
            if path.suffix == ".safetensors":  # timm / Hugging Face checkpoints
                from safetensors.torch import load_file

                state = load_file(str(path), device="cpu")
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(f"{path} is not a readable PyTorch state dict ({type(exc).__name__}: {exc})") from None
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        if not isinstance(state, dict):
            raise UserError(f"{path} does not hold a state dict — give a torchvision .pth file")
    if rename is not None:
        state = rename(state)
    own = module.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise UserError(
            f"pretrained weights do not fit the backbone (shape mismatch in {', '.join(bad[:3])}) — check the "
            "architecture"
        )
    usable = {k: v for k, v in state.items() if k in own}
    if not usable:
        raise UserError("pretrained weights share no parameter names with the backbone — check the file")
    module.load_state_dict(usable, strict=strict)
