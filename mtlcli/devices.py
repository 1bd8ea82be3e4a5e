"""`--device D` and `device=`: the one rule by which every command, the training processes and the Python
API read a device name. auto (or None) -> "cuda" when a CUDA device is available, else "cpu"; "cpu";
"cuda" / "cuda:N" when that device exists. Anything else is one UserError line naming the valid forms.

Under torchrun each process passes its LOCAL_RANK: plain "cuda" (or auto choosing CUDA) is then that
process's own GPU, cuda:LOCAL_RANK. torch is imported on the first call, not with this module, so that
`mtl --help` stays quick.
"""

from __future__ import annotations

import re

from mtlcli.errors import UserError

_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def resolve_device(name: str | None, local_rank: int | None = None) -> str:
    """The device `name` means here (see the module docstring), as a string torch.device accepts."""
    import torch

    text = "auto" if name is None else str(name).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    match = _CUDA.match(text)
    if not match:
        raise UserError(f"unknown device {name!r} for --device; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu (or auto)")
    count = torch.cuda.device_count()
    if match.group(1) is None and local_rank is not None:  # torchrun: this process's GPU
        if local_rank >= count:
            raise UserError(
                f"LOCAL_RANK {local_rank} has no GPU: this machine has CUDA devices 0..{count - 1} — start at most "
                "that many processes per node"
            )
        return f"cuda:{local_rank}"
    if int(match.group(1) or 0) >= count:
        raise UserError(f"--device {name}: this machine has CUDA devices 0..{count - 1}")
    return text
