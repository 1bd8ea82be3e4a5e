"""The interdependent multi-task network against the two single-task networks it replaces.

Goal (papers/interdependent-mtl.txt): at 768x384, one network doing both tasks needs at most half the
latency and parameters of torchvision's `deeplabv3_resnet50` (segmentation) plus
`retinanet_resnet50_fpn` (detection) run one after the other on the same image. All models are built
without weights, timed in one process in alternation (ours, the pair, each reference alone, ...), and
compared by medians; RetinaNet's transform is set to the same 768x384 pixels.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_imtl.py --iterations 5
    .venv/bin/python benchmarks/bench_imtl.py --device cuda --iterations 50 --json imtl.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mtlcli.engine.benchmark import Subject, combined_subject, environment, parse_size, reference_subject, run_benchmark
from mtlcli.models.imtl import build_imtl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="384x768", help="HxW input size (the paper: 384x768)")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None, help="write all rows to this JSON file")
    args = ap.parse_args()
    device = torch.device(args.device)
    size = parse_size(args.size)

    torch.manual_seed(0)
    model = build_imtl(input_size=size).to(device).eval()
    ours = Subject(
        "imtl (ours)",
        model,
        size,
        predict=lambda images: model(images),
        network=model.network,
        prepare=lambda images: model.preprocess(images)[0],
    )
    seg = reference_subject("tv:deeplabv3_resnet50", size, device)
    det = reference_subject("tv:retinanet_resnet50_fpn", size, device)
    pair = combined_subject("deeplabv3 + retinanet", [seg, det])
    print(f"# {environment(device, None)}")
    rows = run_benchmark([ours, pair, seg, det], device=device, iterations=args.iterations, warmup=args.warmup)

    print(f"{'model':<26} {'params M':>9} {'GFLOPs':>8} {'full ms':>9} {'p90 ms':>9} {'net ms':>9}")
    for r in rows:
        net = f"{r['net_median_ms']:>9.1f}" if "net_median_ms" in r else f"{'-':>9}"
        print(
            f"{r['name']:<26} {r['params'] / 1e6:>9.2f} {r['gflops']:>8.1f} {r['full_median_ms']:>9.1f} "
            f"{r['full_p90_ms']:>9.1f} {net}"
        )
    by = {r["name"]: r for r in rows}
    a, b = by["imtl (ours)"], by["deeplabv3 + retinanet"]
    lat, par = a["full_median_ms"] / b["full_median_ms"], a["params"] / b["params"]
    print(
        f"\nimtl / (deeplabv3 + retinanet) at {size[0]}x{size[1]}: latency {lat:.2f}, parameters {par:.2f} "
        f"(goal: both <= 0.50) -> {'met' if lat <= 0.5 and par <= 0.5 else 'NOT met'}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"environment": environment(device, None), "rows": rows, "latency_ratio": lat, "params_ratio": par},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
