"""One command that checks the CUDA side of mtl on one GPU in a few minutes, and writes what it saw.

    .venv/bin/python benchmarks/gpu_check.py --out gpu-check          # on a machine with a GPU
    .venv/bin/python benchmarks/gpu_check.py --cpu --out /tmp/check   # the tiny CPU variant (the test suite runs it)

Sections (each one's failure is recorded and the others still run; exit status 1 if any check failed):

  families  every family's tiny recipe trained for --iterations on a synthetic city with bf16 autocast
            and channels_last (the real `mtl train` loop), plus the same recipe on the CPU in fp32 for
            --reference-iterations; checks: every logged loss finite, the last logged loss below the
            first, and each metric within one order of magnitude of the CPU run's (both near zero is a
            pass). One more run trains the first family with `torch.compile` (a plain loop over the
            same loader and model) and checks its losses the same way.
  benchmark `mtl benchmark` on every paper preset at batch 1 and 8, in bf16 and fp32: network alone and
            full predict path (ms), images/s, peak memory.
  feed      IvaNet512 trained for --feed-iterations at batch --feed-batch from synthetic 1024x2048
            frames with 8 and 16 loader workers: images/s and the share of step time spent waiting for
            data (from metrics.jsonl, first window dropped).

Writes OUT/gpu_check.json (everything) and OUT/gpu_check.md (the tables). `--cpu` runs the same code at
tiny sizes (one family, a few iterations, one tiny benchmark, one loader worker, torch.compile with the eager
backend)
so that the script cannot rot between GPU sessions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

FAMILIES = [
    "ladderdensenet-tiny-synthetic",
    "ivanet-tiny-synthetic",
    "imtl-tiny-synthetic",
    "datnet-tiny-synthetic",
    "safpn-ejhead-tiny-synthetic",
]


def synthetic(folder: Path, images: int, size: tuple[int, int]) -> Path:
    from mtlcli.data.cityscapes import prepare_cityscapes
    from mtlcli.data.synthetic import generate_synthetic

    if (folder / "data" / "dataset.json").is_file():
        return folder / "data"
    source = generate_synthetic(
        folder / "source", train=images, val=max(2, images // 8), size=size, seed=0, quiet=True, workers=None
    )
    prepare_cityscapes(source, folder / "data", quiet=True)
    return folder / "data"


def train_run(recipe_name: str, data: Path, run_dir: Path, device: str, overrides: list[str]) -> dict:
    """Train with the real loop; returns the train windows and the final metrics."""
    from mtlcli.engine.train import train
    from mtlcli.recipes import load_recipe

    recipe = load_recipe(recipe_name, [f"data.root={data}", *overrides])
    iterations = recipe["train"]["iterations"]
    if recipe["train"]["stages"]:  # staged recipes (imtl): the iterations spread over the stages
        n = len(recipe["train"]["stages"])
        recipe["train"]["stages"] = [{**st, "iterations": max(1, iterations // n)} for st in recipe["train"]["stages"]]
    t0 = time.perf_counter()
    result = train(recipe, run_dir, device=device, progress=False)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    windows = [r for r in records if r["type"] == "train"]
    return {
        "seconds": time.perf_counter() - t0,
        "losses": [w["loss"] for w in windows],
        "images_per_s": [w["images_per_s"] for w in windows],
        "data_wait": [w["data_wait"] for w in windows],
        "metrics": result["metrics"],
    }


def loss_checks(losses: list[float]) -> dict[str, bool]:
    return {
        "finite": bool(losses) and all(math.isfinite(v) for v in losses),
        "falling": len(losses) >= 2 and losses[-1] < losses[0],
    }


def same_magnitude(a: float, b: float, floor: float = 0.02) -> bool:
    """Within a factor of 10 of each other, or both below `floor` (an untrained metric near zero)."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    if abs(a) < floor and abs(b) < floor:
        return True
    return a != 0 and b != 0 and 0.1 <= a / b <= 10


def compiled_run(recipe_name: str, data: Path, device: str, iterations: int, backend: str, amp: bool) -> dict:
    """`iterations` training steps of a torch.compile'd model over the training loader."""
    from mtlcli.engine.data import build_datasets, collate_fn, make_loader, to_device, training_targets
    from mtlcli.engine.distributed import DistInfo
    from mtlcli.engine.train import build, with_class_counts
    from mtlcli.recipes import load_recipe

    recipe = load_recipe(recipe_name, [f"data.root={data}", "eval.metrics=[]", 'eval.best_metric=""'])
    dev = torch.device(device)
    torch.manual_seed(0)
    train_ds, _ = build_datasets(recipe, data)
    recipe = with_class_counts(recipe, train_ds)
    model = build(recipe).to(dev).train()
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    train_ds.targets, train_ds.compact = training_targets(recipe, model), True
    step_model = torch.compile(model, backend=backend)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=recipe["train"]["lr"], momentum=0.9)
    info = DistInfo(rank=0, world_size=1, device=dev)
    loader = make_loader(
        train_ds,
        micro_batch=recipe["train"]["batch_size"],
        workers=recipe["train"]["workers"],
        seed=0,
        info=info,
        start=0,
        collate=collate_fn(),
    )
    losses = []
    t0 = time.perf_counter()
    for _ in range(iterations):
        images, targets = to_device(*next(loader), dev)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and dev.type == "cuda"):
            loss = sum(step_model(images, targets).values())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    # windows of the loss, as the training log would show them
    k = max(1, iterations // 5)
    windows = [sum(losses[i : i + k]) / len(losses[i : i + k]) for i in range(0, iterations, k)]
    return {"seconds": time.perf_counter() - t0, "losses": windows, "backend": backend}


def section(results: dict, name: str, fn: Callable[[], Any]) -> None:
    print(f"== {name}", flush=True)
    t0 = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as exc:  # recorded: the other sections still run
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        print(results[name]["traceback"], file=sys.stderr)
    print(f"   {time.perf_counter() - t0:.0f} s", flush=True)


def families(args: argparse.Namespace, data: Path, work: Path) -> dict:
    out = {}
    amp = "none" if args.cpu else "bf16"
    common = [
        f"train.log_interval={args.log_interval}",
        f"train.checkpoint_interval={args.iterations}",
        "eval.interval=0",
        f"train.workers={args.workers}",
    ]
    for name in args.families:
        gpu = train_run(
            name,
            data,
            work / f"{name}-dev",
            args.device,
            common + [f"train.iterations={args.iterations}", f"train.amp={amp}", "train.channels_last=true"],
        )
        ref = train_run(
            name,
            data,
            work / f"{name}-cpu",
            "cpu",
            common
            + [
                f"train.iterations={args.reference_iterations}",
                f"train.checkpoint_interval={args.reference_iterations}",
            ],
        )
        checks = loss_checks(gpu["losses"])
        checks["metrics_match_cpu"] = all(
            same_magnitude(v, ref["metrics"].get(k, float("nan"))) for k, v in gpu["metrics"].items()
        )
        out[name] = {"device": gpu, "cpu": ref, "checks": checks}
    name = args.families[0]
    compiled = compiled_run(name, data, args.device, args.iterations, args.compile_backend, not args.cpu)
    out[f"{name} (torch.compile)"] = {"device": compiled, "checks": loss_checks(compiled["losses"])}
    return out


def benchmarks(args: argparse.Namespace, work: Path) -> list[dict]:
    from mtlcli.cli.benchmark import PRESETS

    rows = []
    jobs = (
        [(p, b, a) for p in PRESETS for b in (1, 8) for a in ("fp32", "bf16")]
        if not args.cpu
        else [("ladderdensenet-tiny-synthetic", 1, "fp32")]
    )
    for target, batch, precision in jobs:
        out = work / f"bench-{target}-{batch}-{precision}.json"
        what = ["--recipe", target] if args.cpu else ["--preset", target]
        cmd = [
            sys.executable,
            "-m",
            "mtlcli",
            "benchmark",
            *what,
            "--batch",
            str(batch),
            "--device",
            args.device,
            "--iterations",
            str(args.bench_iterations),
            "--warmup",
            "1" if args.cpu else "3",
            "--out",
            str(out),
            "--force",
        ]
        if precision == "bf16":
            cmd += ["--amp", "bf16", "--channels-last"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.bench_timeout)
        if proc.returncode != 0:
            rows.append(
                {
                    "preset": target,
                    "batch": batch,
                    "precision": precision,
                    "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:],
                }
            )
            continue
        for r in json.loads(out.read_text())["results"]:
            rows.append({"preset": target, "batch": batch, "precision": precision, **r})
    return rows


def feed(args: argparse.Namespace, work: Path) -> dict:
    data = synthetic(
        work / f"data-{args.feed_images}-{args.feed_size[0]}x{args.feed_size[1]}",
        args.feed_images,
        tuple(args.feed_size),
    )
    out = {}
    recipe = "ivanet-tiny-synthetic" if args.cpu else "ivanet512"
    for workers in args.feed_workers:
        run = train_run(
            recipe,
            data,
            work / f"feed-{workers}",
            args.device,
            [
                "data.dataset=cityscapes",
                f"train.iterations={args.feed_iterations}",
                f"train.batch_size={args.feed_batch}",
                f"train.workers={workers}",
                f"train.log_interval={max(1, args.feed_iterations // 5)}",
                f"train.checkpoint_interval={args.feed_iterations}",
                "eval.metrics=[]",
                'eval.best_metric=""',
                f"train.amp={'none' if args.cpu else 'bf16'}",
                "train.channels_last=true",
            ],
        )
        later = slice(1, None) if len(run["images_per_s"]) > 1 else slice(None)
        ips, wait = run["images_per_s"][later], run["data_wait"][later]
        out[str(workers)] = {
            "recipe": recipe,
            "images_per_s": sorted(ips)[len(ips) // 2],
            "data_wait": sorted(wait)[len(wait) // 2],
            "windows": len(ips),
        }
    return out


def markdown(results: dict, env: dict) -> str:
    lines = [f"# gpu_check ({env['device']})", "", ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    fam = results.get("families", {})
    if "error" in fam:
        lines += [f"families: **failed** — {fam['error']}", ""]
    elif fam:
        lines += [
            "| recipe | s | first loss | last loss | finite | falling | metrics vs CPU | metrics (device / CPU) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in fam.items():
            d, c = r["device"], r["checks"]
            metrics = (
                ", ".join(
                    f"{k} {v:.3g} / {r['cpu']['metrics'].get(k, float('nan')):.3g}"
                    for k, v in d.get("metrics", {}).items()
                )
                if "cpu" in r
                else "—"
            )
            lines.append(
                f"| {name} | {d['seconds']:.0f} | {d['losses'][0]:.3f} | {d['losses'][-1]:.3f} | "
                f"{c['finite']} | {c['falling']} | {c.get('metrics_match_cpu', '—')} | {metrics} |"
            )
        lines.append("")
    bench = results.get("benchmark", [])
    if isinstance(bench, dict):
        lines += [f"benchmark: **failed** — {bench['error']}", ""]
    elif bench:
        lines += [
            "| preset | model | batch | precision | net ms | full ms | img/s | peak MB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in bench:
            if "error" in r:
                lines.append(f"| {r['preset']} | error: {r['error']} | {r['batch']} | {r['precision']} | | | | |")
                continue
            cells = [r.get(k) for k in ("net_median_ms", "full_median_ms", "images_per_s", "peak_mem_mb")]
            fmt = ["—" if v is None else f"{v:.1f}" for v in cells]
            lines.append(f"| {r['preset']} | {r['name']} | {r['batch']} | {r['precision']} | " + " | ".join(fmt) + " |")
        lines.append("")
    fd = results.get("feed", {})
    if "error" in fd:
        lines += [f"feed: **failed** — {fd['error']}", ""]
    elif fd:
        lines += ["| recipe | loader workers | images/s | data wait |", "|---|---|---|---|"]
        for workers, r in fd.items():
            lines.append(f"| {r['recipe']} | {workers} | {r['images_per_s']:.1f} | {100 * r['data_wait']:.1f}% |")
        lines.append("")
    return "\n".join(lines)


def failed(results: dict) -> list[str]:
    bad = [name for name, r in results.items() if isinstance(r, dict) and "error" in r]
    for name, r in results.get("families", {}).items():
        if isinstance(r, dict) and "checks" in r:
            bad += [f"{name}: {k}" for k, ok in r["checks"].items() if not ok]
    bad += [
        f"benchmark {r['preset']} b{r['batch']} {r['precision']}"
        for r in results.get("benchmark", [])
        if isinstance(r, dict) and "error" in r
    ]
    return bad


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument("--cpu", action="store_true", help="the tiny CPU variant")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --cpu)")
    parser.add_argument(
        "--sections", nargs="+", default=["families", "benchmark", "feed"], choices=["families", "benchmark", "feed"]
    )
    parser.add_argument(
        "--families", nargs="+", default=None, help="tiny recipes (default: all five; the first with --cpu)"
    )
    parser.add_argument("--iterations", type=int, default=None, help="default 300 (4 with --cpu)")
    parser.add_argument("--reference-iterations", type=int, default=None, help="CPU run; default 300 (2 with --cpu)")
    args = parser.parse_args(argv)
    cpu = args.cpu
    args.families = args.families or (FAMILIES[:1] if cpu else FAMILIES)
    args.device = args.device or ("cpu" if cpu else "cuda")
    args.iterations = args.iterations or (4 if cpu else 300)
    args.reference_iterations = args.reference_iterations or (2 if cpu else 300)
    args.log_interval = max(1, args.iterations // 10)
    args.workers = 0 if cpu else 4
    args.images, args.size = (4, (64, 128)) if cpu else (64, (256, 512))
    args.compile_backend = "eager" if cpu else "inductor"
    args.bench_iterations = 1 if cpu else 10
    args.bench_timeout = 300 if cpu else 600
    args.feed_iterations = 2 if cpu else 50
    args.feed_batch = 1 if cpu else 32
    args.feed_workers = [1] if cpu else [8, 16]
    args.feed_images, args.feed_size = (4, (64, 128)) if cpu else (64, (1024, 2048))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run with --cpu for the CPU variant", file=sys.stderr)
        return 2
    from mtlcli.engine.benchmark import environment

    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    work.mkdir(exist_ok=True)
    env = {k: str(v) for k, v in environment(torch.device(args.device), None if args.cpu else "bf16").items()}
    env.setdefault("device", args.device)
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    if "families" in args.sections:
        data = synthetic(work / f"data-{args.images}-{args.size[0]}x{args.size[1]}", args.images, args.size)
        section(results, "families", lambda: families(args, data, work))
    if "benchmark" in args.sections:
        section(results, "benchmark", lambda: benchmarks(args, work))
    if "feed" in args.sections:
        section(results, "feed", lambda: feed(args, work))
    bad = failed(results)
    summary = {
        "environment": env,
        "args": {k: str(v) for k, v in vars(args).items()},
        "seconds": time.perf_counter() - t0,
        "failed": bad,
        **results,
    }
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=2, default=str))
    table = markdown(results, env)
    (args.out / "gpu_check.md").write_text(table + "\n")
    print(table)
    print(
        f"{'FAILED: ' + '; '.join(bad) if bad else 'all checks passed'} ({summary['seconds']:.0f} s) -> "
        f"{args.out / 'gpu_check.json'}, {args.out / 'gpu_check.md'}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
