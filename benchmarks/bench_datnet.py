"""DATNet Light / Heavy against Mask R-CNN: per-image inference latency side by side (papers/datnet.txt, Table 7).

Four models, built without weights (80 COCO classes + background, R50-FPN), timed in one process in
alternation (A B C D, B C D A, C D A B, ...) on the same 800x1333 image, median over the timed rounds:

    ours Mask R-CNN         mtlcli.models.rcnn.build_maskrcnn
    DATNet Light            mtlcli.models.datnet.build_datnet(head="light")
    DATNet Heavy            mtlcli.models.datnet.build_datnet(head="heavy")
    torchvision Mask R-CNN  torchvision.models.detection.maskrcnn_resnet50_fpn

"full" is the whole predict path `model([image])` (normalise, resize, backbone, RPN with 1000 proposals,
RoI heads, NMS, mask paste into the image, DATNet's sem_seg at full resolution). With `--network` our
models are also timed on `model.network(batch)` alone (backbone, dense heads, RPN and RoI heads in the
network frame; `batch = model.preprocess([image])[0]`, i.e. without resizing and mask pasting).
Untrained weights give near-uniform class scores, so every model runs with a score threshold of 0: each
returns its full 100 detections and the mask heads see as many RoIs as with trained weights. Our Mask
R-CNN gets torchvision's (random) weights, so the two give identical outputs and the same NMS / paste
work; DATNet's own random weights make its NMS and paste work differ somewhat (`--network` shows
the network without the paste).

Goals: our Mask R-CNN within 5% of torchvision's; Light <= 2x and Heavy <= 3.5x our Mask R-CNN
(the paper, P100 GPU: 91 / 220 / 391 ms, i.e. 2.4x and 4.3x).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_datnet.py --iterations 3
    .venv/bin/python benchmarks/bench_datnet.py --device cuda --iterations 20 --network --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision

from mtlcli.models.datnet import build_datnet
from mtlcli.models.rcnn import build_maskrcnn


def build_models(device: torch.device) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    models = {
        "Mask R-CNN (ours)": build_maskrcnn(num_det_classes=80, box_score_thresh=0.0),
        "DATNet Light": build_datnet(num_det_classes=80, num_seg_classes=81, head="light", box_score_thresh=0.0),
        "DATNet Heavy": build_datnet(num_det_classes=80, num_seg_classes=81, head="heavy", box_score_thresh=0.0),
        "Mask R-CNN (torchvision)": torchvision.models.detection.maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=81, box_score_thresh=0.0
        ),
    }
    # One state dict for both Mask R-CNNs: with random weights the number and size of the boxes going
    # through NMS and mask pasting differ from one initialisation to the next, so identical weights are
    # what makes "ours vs torchvision" a comparison of the code alone (the two return the same output).
    models["Mask R-CNN (ours)"].load_state_dict(models["Mask R-CNN (torchvision)"].state_dict())
    return {name: m.to(device).eval() for name, m in models.items()}


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--iterations", type=int, default=3, help="timed rounds (each runs every model once)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed rounds after the first (untimed) call")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--network", action="store_true", help="also time model.network(batch) for our models")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    models = build_models(device)
    image = torch.rand(3, *args.size, generator=torch.Generator().manual_seed(0)).to(device)

    calls: dict[str, Callable[[], Any]] = {}
    for name, model in models.items():
        calls[f"{name} | full"] = lambda m=model: m([image])
        if args.network and hasattr(model, "network"):
            batch = model.preprocess([image])[0]
            calls[f"{name} | network"] = lambda m=model, b=batch: m.network(b)

    times: dict[str, list[float]] = {key: [] for key in calls}
    with torch.inference_mode():
        first = {}
        for key, call in calls.items():
            out = first[key] = call()
            if key.endswith("full"):
                print(f"{key.split(' |')[0]}: {len(out[0]['boxes'])} detections, keys {sorted(out[0])}", flush=True)
        a, b = first["Mask R-CNN (ours) | full"][0], first["Mask R-CNN (torchvision) | full"][0]
        same = all(torch.allclose(a[k], b[k]) for k in ("boxes", "scores", "masks")) and torch.equal(
            a["labels"], b["labels"]
        )
        print(f"our Mask R-CNN returns torchvision's outputs: {same}", flush=True)
        keys = list(calls)
        for round_ in range(args.warmup + args.iterations):
            # alternation, starting one model later each round: machine noise and whatever one model
            # leaves behind (allocator, caches) fall on every model alike
            for key in keys[round_ % len(keys) :] + keys[: round_ % len(keys)]:
                t = timed(calls[key], device)
                if round_ >= args.warmup:
                    times[key].append(t)
            print(
                f"round {round_ + 1}/{args.warmup + args.iterations}: "
                + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in times.items() if v),
                flush=True,
            )

    medians = {key: statistics.median(v) * 1e3 for key, v in times.items()}
    base = medians["Mask R-CNN (ours) | full"]
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    print(
        f"\nper-image latency at {args.size[0]}x{args.size[1]} on {device}, median of {args.iterations} "
        f"alternating rounds (threads {torch.get_num_threads()}):"
    )
    print(f"{'model':42s} {'median ms':>10s} {'x ours MRCNN':>13s} {'params':>9s}")
    for key, ms in medians.items():
        print(f"{key:42s} {ms:10.0f} {ms / base:13.2f} {params[key.split(' |')[0]] / 1e6:8.1f}M")
    ratios = {
        "ours_vs_torchvision": base / medians["Mask R-CNN (torchvision) | full"],
        "light_vs_ours": medians["DATNet Light | full"] / base,
        "heavy_vs_ours": medians["DATNet Heavy | full"] / base,
    }
    print(
        "goals: ours/torchvision within 1 +- 0.05: {ours_vs_torchvision:.3f}; Light <= 2x: {light_vs_ours:.2f}x; "
        "Heavy <= 3.5x: {heavy_vs_ours:.2f}x".format(**ratios)
    )
    result = {"size": list(args.size), "device": str(device), "threads": torch.get_num_threads(),
              "iterations": args.iterations, "median_ms": medians, "ratios": ratios,
              "times_s": times, "params": params}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
