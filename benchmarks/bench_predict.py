"""`mtl predict` throughput against the network alone, on the same images, side by side.

Writes N random JPEGs of H x W into a temporary folder, builds a family's tiny recipe (default
`ivanet-tiny-synthetic`, random weights, Cityscapes classes) and times, per round and in rotating order:

    network      `model.network(batch)` on batches already decoded, resized and normalised on the device
    forward      `model(images)`: preprocess + network + postprocess (NMS, upsampling), decoded images
    api          `Predictor.predict(paths)`: decoding in the main process, results on the CPU
    predict      the whole command (`predict_sources`): decoding on loader workers, overlays, semantic
                 PNGs and detections.json written
    predict-json the command with --no-save-images

Each figure is the median over rounds of images/s; the table also gives each one relative to the
network alone (goal: the whole command within 1.3x of the network's time on a GPU).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_predict.py --images 32 --rounds 3
    .venv/bin/python benchmarks/bench_predict.py --device cuda --images 256 --batch-size 16 --workers 4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_images(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"img{i:04d}.jpg"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(p)
    return paths


def build(recipe_name: str, device: str):
    from mtlcli.api import Predictor
    from mtlcli.data.cityscapes import cityscapes_meta
    from mtlcli.models import build_from_recipe
    from mtlcli.recipes import load_recipe

    recipe = load_recipe(recipe_name)
    meta = cityscapes_meta(Path("."), ["val"])
    network = build_from_recipe(
        recipe["model"],
        load_weights=False,
        num_det_classes=len(meta.det_classes),
        num_seg_classes=len(meta.seg_classes),
    )
    card = {
        "dataset": "cityscapes",
        "det_classes": meta.det_classes,
        "seg_classes": meta.seg_classes,
        "palette": meta.palette,
        "det_category_ids": list(range(1, 9)),
        "cityscapes": True,
    }
    return Predictor(network.to(device).eval(), recipe, card, device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="ivanet-tiny-synthetic")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--score-threshold", type=float, default=0.3)
    args = parser.parse_args()

    from mtlcli.api import to_image_tensor
    from mtlcli.engine.predict import PredictOptions, predict_sources

    model = build(args.recipe, args.device)
    bs = args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        paths = make_images(tmp / "in", args.images, tuple(args.size))
        decoded = [to_image_tensor(p) for p in paths]
        on_device = [img.to(args.device) for img in decoded]
        with torch.inference_mode():
            batches = [model.network.preprocess(on_device[i : i + bs])[0] for i in range(0, len(on_device), bs)]

        def network():
            with torch.inference_mode():
                for b in batches:
                    model.network.network(b)

        def forward():
            with torch.inference_mode():
                for i in range(0, len(on_device), bs):
                    model.network(on_device[i : i + bs])

        def api():
            model.predict(list(map(str, paths)), batch_size=bs, score_threshold=args.score_threshold)

        counter = iter(range(10**6))

        def command(save_images: bool):
            def run():
                opts = PredictOptions(
                    score_threshold=args.score_threshold,
                    batch_size=bs,
                    workers=args.workers,
                    save_images=save_images,
                    progress=False,
                )
                predict_sources(model, [tmp / "in"], tmp / f"out{next(counter)}", opts)

            return run

        cases = {
            "network": network,
            "forward": forward,
            "api": api,
            "predict": command(True),
            "predict-json": command(False),
        }
        network()  # warm-up
        times: dict[str, list[float]] = {k: [] for k in cases}
        names = list(cases)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                sync(args.device)
                t0 = time.perf_counter()
                cases[name]()
                sync(args.device)
                times[name].append(time.perf_counter() - t0)
    net = statistics.median(times["network"])
    print(
        f"{args.recipe} on {args.device}, {args.images} images of {args.size[0]}x{args.size[1]}, batch {bs}, "
        f"{args.workers} workers, {args.rounds} rounds, torch threads {torch.get_num_threads()}"
    )
    print(f"{'case':<14}{'images/s':>10}{'time / network':>16}")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:<14}{args.images / t:>10.1f}{t / net:>15.2f}x")


if __name__ == "__main__":
    main()
