"""LadderDenseNet 4x against the Table 1 baselines: latency, parameters and peak memory side by side.

The paper's claim (papers/ladder-densenet-and-ssd.txt): LadderDenseNet 4x needs less memory and time
than Dilated 8x DenseNet 4x. All three DenseNet-121 variants (no weights) are timed in one process, in
alternation (A B C A B C ...), at each size; inference latency of the network alone and of the full
predict path (resize, network, softmax at the input size), peak memory above the loaded model (CUDA max
allocated, or the process's peak RSS on CPU, reset before each measurement), and a training step
(forward + backward, batch 1) at the sizes given by --train-sizes, the setting where the paper met its
memory limit.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_ladder.py --iterations 3
    .venv/bin/python benchmarks/bench_ladder.py --sizes 448x1024 --iterations 5 --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mtlcli.engine.benchmark import (
    Subject,
    _current_bytes,
    _peak_bytes,
    _reset_peak,
    _sync,
    environment,
    parse_size,
    run_benchmark,
)
from mtlcli.models.ladder import build_ladder_densenet

VARIANTS = {"LadderDenseNet 4x": "ladder", "DenseNet 32x": "densenet32x", "Dilated 8x DenseNet 4x": "dilated8x"}


def subject(label: str, variant: str, size: tuple[int, int], device: torch.device) -> Subject:
    torch.manual_seed(0)
    model = build_ladder_densenet(num_seg_classes=19, variant=variant, input_size=size).to(device).eval()
    return Subject(
        label,
        model,
        size,
        predict=lambda images: model(images),
        network=lambda batch: model.network(batch),
        prepare=lambda images: model.preprocess(images)[0],
        kind="mtl",
    )


def train_rows(size: tuple[int, int], device: torch.device, iterations: int) -> list[dict]:
    """Median time and peak memory of one training step (batch 1, forward + backward), variants alternated."""
    g = torch.Generator().manual_seed(0)
    image = [torch.rand(3, *size, generator=g).to(device)]
    target = [{"semantic": torch.randint(0, 19, size, generator=g).to(device)}]
    models = {}
    for label, variant in VARIANTS.items():
        torch.manual_seed(0)
        models[label] = build_ladder_densenet(num_seg_classes=19, variant=variant, input_size=size).to(device).train()

    def step(model: torch.nn.Module) -> None:
        model.zero_grad(set_to_none=True)
        sum(model(image, target).values()).backward()

    for model in models.values():  # warm-up, gradients allocated once
        step(model)
    times: dict[str, list[float]] = {k: [] for k in models}
    peaks: dict[str, float] = {}
    for it in range(iterations):
        for label, model in models.items():
            model.zero_grad(set_to_none=True)
            if it == 0:
                _reset_peak(device)
                base = _current_bytes(device)
            _sync(device)
            t0 = time.perf_counter()
            step(model)
            _sync(device)
            times[label].append(time.perf_counter() - t0)
            if it == 0:
                peaks[label] = _peak_bytes(device, base) / 2**20
    return [
        {"name": k, "size": list(size), "train_median_ms": statistics.median(v) * 1e3, "train_peak_mem_mb": peaks[k]}
        for k, v in times.items()
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["448x1024", "1024x2048"], help="HxW input sizes")
    ap.add_argument("--train-sizes", nargs="*", default=["448x1024"], help="HxW sizes for the training step")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None, help="write all rows to this JSON file")
    args = ap.parse_args()
    device = torch.device(args.device)

    env = environment(device, None)
    print(f"# {env}")
    rows = []
    for text in args.sizes:
        size = parse_size(text)
        subjects = [subject(label, variant, size, device) for label, variant in VARIANTS.items()]
        rows += run_benchmark(subjects, device=device, iterations=args.iterations, warmup=args.warmup)
        del subjects
    train = [r for text in args.train_sizes for r in train_rows(parse_size(text), device, args.iterations)]

    print(f"{'model':<24} {'HxW':>10} {'params M':>9} {'GFLOPs':>8} {'net ms':>9} {'full ms':>9} {'peak MB':>9}")
    for r in rows:
        print(
            f"{r['name']:<24} {r['size'][0]:>4}x{r['size'][1]:<5} {r['params'] / 1e6:>9.2f} {r['gflops']:>8.1f} "
            f"{r['net_median_ms']:>9.1f} {r['full_median_ms']:>9.1f} {r['peak_mem_mb']:>9.0f}"
        )
    print(f"\n{'training step (batch 1)':<24} {'HxW':>10} {'ms':>9} {'peak MB':>9}")
    for r in train:
        print(
            f"{r['name']:<24} {r['size'][0]:>4}x{r['size'][1]:<5} {r['train_median_ms']:>9.1f} "
            f"{r['train_peak_mem_mb']:>9.0f}"
        )

    print("\nLadderDenseNet 4x / Dilated 8x DenseNet 4x (the paper: both below 1):")
    for text in args.sizes:
        size = list(parse_size(text))
        by = {r["name"]: r for r in rows if r["size"] == size}
        lad, dil = by["LadderDenseNet 4x"], by["Dilated 8x DenseNet 4x"]
        print(
            f"  {size[0]}x{size[1]} inference: time {lad['net_median_ms'] / dil['net_median_ms']:.2f}, "
            f"peak memory {lad['peak_mem_mb'] / max(dil['peak_mem_mb'], 1e-9):.2f}"
        )
    for text in args.train_sizes:
        size = list(parse_size(text))
        by = {r["name"]: r for r in train if r["size"] == size}
        lad, dil = by["LadderDenseNet 4x"], by["Dilated 8x DenseNet 4x"]
        print(
            f"  {size[0]}x{size[1]} training:  time {lad['train_median_ms'] / dil['train_median_ms']:.2f}, "
            f"peak memory {lad['train_peak_mem_mb'] / max(dil['train_peak_mem_mb'], 1e-9):.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "inference": rows, "training": train}, indent=2))


if __name__ == "__main__":
    main()
