"""Speed, size and memory of models: the plain functions behind `mtl benchmark`.

For each model: parameters, FLOPs per image (`torch.utils.flop_counter`), latency median / p90 / min
over timed runs after warm-up (CUDA synchronised), images/s, peak memory (CUDA max allocated, or the
process's peak RSS on CPU, reset per measurement through /proc/self/clear_refs), and the network alone
(`model.network(batch)`) apart from the full predict path (`model(images)`: resize, normalise, network,
decode, NMS, mask paste). All models of one run are timed in alternation (A B C A B C ...) so that
machine noise falls on all of them alike and cancels in their ratios.
"""

from __future__ import annotations

import contextlib
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from mtlcli.errors import UserError

# torchvision reference models for --compare, built without weights.
REFERENCES = {
    "tv:ssd300_vgg16": ("ssd300_vgg16", "detection"),
    "tv:fasterrcnn_resnet50_fpn": ("fasterrcnn_resnet50_fpn", "detection"),
    "tv:maskrcnn_resnet50_fpn": ("maskrcnn_resnet50_fpn", "detection"),
    "tv:retinanet_resnet50_fpn": ("retinanet_resnet50_fpn", "detection"),
    "tv:deeplabv3_resnet50": ("deeplabv3_resnet50", "segmentation"),
    "tv:fcn_resnet50": ("fcn_resnet50", "segmentation"),
}


@dataclass
class Subject:
    """One thing to time: a full predict path and (where the model exposes it) the network alone."""

    name: str
    model: nn.Module
    size: tuple[int, int]  # (H, W) of the input images
    predict: Callable[[list[Tensor]], Any]
    network: Callable[[Tensor], Any] | None = None
    prepare: Callable[[list[Tensor]], Tensor] | None = None  # images -> network batch
    train_step: Callable[[list[Tensor]], None] | None = None
    kind: str = "mtl"
    timings: dict[str, list[float]] = field(default_factory=dict)


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' (or a single number for a square) -> (H, W); anything else is a UserError."""
    try:
        parts = [int(p) for p in text.lower().replace("*", "x").split("x")]
    except ValueError:
        raise UserError(f"--size {text!r} is not HxW (e.g. 300x300 or 384x768)") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 16 or max(parts) > 8192:
        raise UserError(f"--size {text!r}: height and width must be between 16 and 8192 pixels (e.g. 512x512)")
    return parts[0], parts[1]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # hand freed heap back so that the RSS rise is real
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):  # not Linux: the peak is then process-wide
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def _proc_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_bytes(device: torch.device, baseline: int) -> int:
    """Peak memory since the last reset above `baseline`: CUDA max allocated, or on CPU the rise of the
    process's peak resident set (VmHWM) over its resident set at the reset (weights already loaded)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)) - baseline
    peak = _proc_status("VmHWM")
    if peak is None:
        import resource

        peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return max(peak - baseline, 0)


def _current_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return _proc_status("VmRSS") or 0


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def random_images(batch: int, size: tuple[int, int], device: torch.device, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, *size, generator=g).to(device) for _ in range(batch)]


def random_targets(images: list[Tensor], num_det: int, num_seg: int, seed: int = 0) -> list[dict[str, Tensor]]:
    """Plausible DESIGN.md §4 targets for a training-step timing: a few boxes with their filled masks,
    a semantic map and DT bins."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for img in images:
        h, w = img.shape[-2:]
        n = 4
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = (torch.rand(n, 2, generator=g) * 0.3 + 0.1) * torch.tensor([w, h])
        boxes = torch.cat([xy, xy + wh], 1)
        masks = torch.zeros(n, h, w, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            masks[i, y0:y1, x0:x1] = 1
        dev = img.device
        out.append(
            {
                "boxes": boxes.to(dev),
                "labels": torch.randint(1, max(num_det, 1) + 1, (n,), generator=g).to(dev),
                "masks": masks.to(dev),
                "iscrowd": torch.zeros(n, dtype=torch.int64, device=dev),
                "semantic": torch.randint(0, max(num_seg, 1), (h, w), generator=g).to(dev),
                "dt": torch.randint(0, 4, (h, w), generator=g).to(dev),
            }
        )
    return out


def _summary(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    p90 = times[min(len(times) - 1, math.ceil(0.9 * len(times)) - 1)]
    return {"median_ms": statistics.median(times) * 1e3, "p90_ms": p90 * 1e3, "min_ms": times[0] * 1e3}


def run_benchmark(
    subjects: list[Subject],
    *,
    batch: int = 1,
    device: torch.device,
    iterations: int = 10,
    warmup: int = 2,
    amp: str | None = None,
    train: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Time every subject in alternation and return one result row per subject.

    Rows: name, kind, size, batch, params, gflops (per image, network where available else full
    path), net_* and full_* latency summaries (ms per batch), images_per_s (full path), peak_mem_mb
    (memory the full path needs above the loaded model), post_ratio (full / network median) and train_* when `train`.
    """
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
        if amp and device.type == "cuda"
        else contextlib.nullcontext()
    )
    inputs = {s.name: random_images(batch, s.size, device) for s in subjects}
    rows: dict[str, dict[str, Any]] = {}
    for s in subjects:
        s.model.eval()
        imgs = inputs[s.name]
        try:
            with torch.inference_mode(), autocast:
                one = imgs[:1]
                s.predict(one)  # a size the model cannot take fails here, before any timing
                if s.network is not None and s.prepare is not None:
                    net_batch = s.prepare(one)
                    flops = count_flops(partial(s.network, net_batch))
                else:
                    flops = count_flops(partial(s.predict, one))
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower():
                raise UserError(
                    f"{s.name}: out of memory at {s.size[0]}x{s.size[1]} with batch {batch} — use a smaller --size "
                    "or --batch"
                ) from None
            raise UserError(
                f"{s.name} cannot run at {s.size[0]}x{s.size[1]} ({str(exc).splitlines()[0]}) — choose a larger --size"
            ) from None
        rows[s.name] = {
            "name": s.name,
            "kind": s.kind,
            "size": list(s.size),
            "batch": batch,
            "params": count_parameters(s.model),
            "gflops": flops / 1e9,
        }
        s.timings = {"net": [], "full": [], "train": []}

    def timed(fn: Callable[[], Any]) -> float:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t0

    prepared: dict[str, tuple[Callable[[Tensor], Any], Tensor]] = {}  # name -> (network, its batch)
    with torch.inference_mode(), autocast:
        for s in subjects:
            if s.network is not None and s.prepare is not None:
                prepared[s.name] = (s.network, s.prepare(inputs[s.name]))
        for _ in range(warmup):
            for s in subjects:
                s.predict(inputs[s.name])
                if s.name in prepared:
                    network, net_batch = prepared[s.name]
                    network(net_batch)
        peaks: dict[str, int] = {}
        for it in range(iterations):
            for s in subjects:
                if it == 0:
                    _reset_peak(device)
                    base = _current_bytes(device)
                s.timings["full"].append(timed(partial(s.predict, inputs[s.name])))
                if it == 0:
                    peaks[s.name] = _peak_bytes(device, base)
                if s.name in prepared:
                    network, net_batch = prepared[s.name]
                    s.timings["net"].append(timed(partial(network, net_batch)))
            if progress:
                progress(f"inference {it + 1}/{iterations}")
    if train:
        for s in subjects:
            if s.train_step is not None:
                s.model.train()
                for _ in range(warmup):
                    s.train_step(inputs[s.name])
        for it in range(iterations):
            for s in subjects:
                if s.train_step is not None:
                    s.timings["train"].append(timed(partial(s.train_step, inputs[s.name])))
            if progress:
                progress(f"training {it + 1}/{iterations}")
        for s in subjects:
            s.model.eval()

    out = []
    for s in subjects:
        row = rows[s.name]
        full = _summary(s.timings["full"])
        row.update({f"full_{k}": v for k, v in full.items()})
        row["images_per_s"] = batch / (full["median_ms"] / 1e3)
        row["peak_mem_mb"] = peaks[s.name] / 2**20
        if s.timings["net"]:
            net = _summary(s.timings["net"])
            row.update({f"net_{k}": v for k, v in net.items()})
            row["post_ratio"] = full["median_ms"] / net["median_ms"]
        if s.timings["train"]:
            tr = _summary(s.timings["train"])
            row.update({f"train_{k}": v for k, v in tr.items()})
            row["train_images_per_s"] = batch / (tr["median_ms"] / 1e3)
        out.append(row)
    return out


def environment(device: torch.device, amp: str | None) -> dict[str, Any]:
    env = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "precision": amp if (amp and device.type == "cuda") else "fp32",
        "machine": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def reference_subject(
    key: str, size: tuple[int, int], device: torch.device, score_thresh: float | None = None
) -> Subject:
    """A torchvision reference model (no weights) as a Subject; detection models get their transform's
    min/max size set to the benchmark size so all models see the same pixels. `score_thresh` replaces
    the detection score threshold (0 keeps every detection of an untrained model, like ours)."""
    import torchvision.models.detection as tvd
    import torchvision.models.segmentation as tvs

    fn_name, kind = REFERENCES[key]
    if kind == "detection":
        model = getattr(tvd, fn_name)(weights=None, weights_backbone=None)
        if fn_name == "ssd300_vgg16":
            size = (300, 300)  # a fixed-size network: its extra layers need 300x300
        else:
            model.transform.min_size = (min(size),)
            model.transform.max_size = max(size)
        if score_thresh is not None:
            if hasattr(model, "roi_heads"):
                model.roi_heads.score_thresh = score_thresh
            else:
                model.score_thresh = score_thresh
        model = model.to(device).eval()

        def predict(images: list[Tensor]) -> Any:
            return model(images)

        return Subject(key, model, size, predict, kind="torchvision")
    model = getattr(tvs, fn_name)(weights=None, weights_backbone=None, aux_loss=False).to(device).eval()
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def prepare(images: list[Tensor]) -> Tensor:
        return (torch.stack(images) - mean) / std

    def network(batch: Tensor) -> Any:
        return model(batch)["out"]

    def predict_seg(images: list[Tensor]) -> Any:
        return network(prepare(images)).softmax(1)

    return Subject(key, model, size, predict_seg, network=network, prepare=prepare, kind="torchvision")


def combined_subject(name: str, parts: list[Subject]) -> Subject:
    """Several models run one after the other on the same image (the single-task networks a multi-task
    model replaces)."""
    container = nn.ModuleList([p.model for p in parts])

    def predict(images: list[Tensor]) -> Any:
        return [p.predict(images) for p in parts]

    return Subject(name, container, parts[0].size, predict, kind="torchvision")
