"""EJ-Head Enriched Feature: the cost of the box branch reading the 14x14 joint features.

The forms of `safpn.EnrichedBoxHead` (R RoIs of [C, 14, 14], C = 256, representation 1024):
  strided  one 3x3 stride-2 conv 14x14 -> 7x7, fc6 / fc7     (the default)
  conv     two 3x3 convs at 14x14, 2x2 max-pool, fc6 / fc7
  pool     2x2 max-pool, fc6 / fc7                           (the earlier form: no learned layer at 14x14)
  flatten  fc6 on the flattened 14x14 map, fc7
timed in alternation (strided conv pool flatten strided ...) in one process, forward only, medians over
--iterations; parameters and multiply-adds per RoI are counted. At test time the box branch sees every
RPN proposal (1000 per image at the paper's settings), in training the 512 sampled RoIs.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_ejhead_box.py --rois 100 --iterations 5
    .venv/bin/python benchmarks/bench_ejhead_box.py --rois 1000 --iterations 50 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mtlcli.models.safpn import EnrichedBoxHead


def macs_per_roi(head: EnrichedBoxHead) -> int:
    convs = sum(c.weight.numel() * (14 // c.stride[0]) ** 2 for c in head.convs)
    return convs + head.fc6.weight.numel() + head.fc7.weight.numel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rois", type=int, default=100)
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    forms = {"strided": 1, "conv": 2, "pool": 1, "flatten": 1}
    heads = {form: EnrichedBoxHead(args.channels, 1024, form, n).eval().to(dev) for form, n in forms.items()}
    x = torch.randn(args.rois, args.channels, 14, 14, device=dev)
    times: dict[str, list[float]] = {k: [] for k in heads}
    with torch.inference_mode():
        for head in heads.values():  # warm-up
            head(x)
        for _ in range(args.iterations):
            for name, head in heads.items():
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                head(x)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(1000 * (time.perf_counter() - t0))
    print(
        f"{args.rois} RoIs x [{args.channels}, 14, 14] on {dev} (torch threads: {torch.get_num_threads()}), "
        f"medians of {args.iterations}"
    )
    print(f"{'form':<8} {'params':>10} {'GMAC/RoI':>9} {'ms':>9}")
    for name, head in heads.items():
        params = sum(p.numel() for p in head.parameters())
        print(
            f"{name:<8} {params / 1e6:>9.2f}M {macs_per_roi(head) / 1e9:>9.3f} {statistics.median(times[name]):>9.1f}"
        )


if __name__ == "__main__":
    main()
