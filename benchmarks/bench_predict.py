"""`mtl predict` throughput against the network alone, on the same images, side by side.

Writes N random JPEGs of H x W into a temporary folder, builds a family's tiny recipe (default
`ivanet-tiny-synthetic`, random weights, Cityscapes classes) and times, per round and in rotating order:

    network      `model.network(batch)` on batches already decoded, resized and normalised on the device
    forward      `model(images)`: preprocess + network + postprocess (NMS, upsampling), decoded images
    api          `Predictor.predict(paths)`: decoding in the main process, results on the CPU
    predict      the whole command (`predict_sources`): decoding on loader workers, overlays, semantic
                 PNGs and detections.json written
    predict-json the command with --no-save-images
    predict-json-eager  the same with `Predictor.fast` off: the network's own eval output (softmax at full
                 resolution, DESIGN.md §4), what predict ran before the fast path became the default

    predict-onnx the command with --no-save-images on the model exported by `mtl export` (whole predict
                 path in one ONNX graph), run by onnxruntime on the CPU (`--onnx`)

Each figure is the median over rounds of images/s; the table also gives each one relative to the
network alone (goal: predict-json within 1.15x of the network's time at batch 8; predict-onnx >= 1.3x
the images/s of predict-json on the CPU). It also checks that the semantic map predict writes (argmax of
the upsampled logits) equals the one `mtl eval` scores (argmax of the softmax of the same upsampled logits).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_predict.py --images 32 --rounds 3 --onnx
    .venv/bin/python benchmarks/bench_predict.py --run runs/ivanet-tiny-synthetic --images 32 --rounds 5
    .venv/bin/python benchmarks/bench_predict.py --recipe ivanet300 --size 375 500 --images 16 --onnx
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
    from mtlcli.models import build_from_recipe, builder_arguments
    from mtlcli.recipes import load_recipe

    recipe = load_recipe(recipe_name)
    meta = cityscapes_meta(Path("."), ["val"])
    valid = builder_arguments(recipe["model"]["name"])
    counts = {"num_det_classes": len(meta.det_classes), "num_seg_classes": len(meta.seg_classes)}
    network = build_from_recipe(recipe["model"], load_weights=False, **{k: v for k, v in counts.items() if k in valid})
    card = {
        "dataset": "cityscapes",
        "det_classes": meta.det_classes,
        "seg_classes": meta.seg_classes,
        "palette": meta.palette,
        "det_category_ids": list(range(1, 9)),
        "cityscapes": True,
    }
    predictor = Predictor(network.to(device).eval(), recipe, card, device)
    return predictor  # fast (the default): single-stage families through EndToEnd (mtlcli.models.endtoend)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="ivanet-tiny-synthetic")
    parser.add_argument("--run", help="a trained run or checkpoint instead of the recipe's random weights")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--score-threshold", type=float, default=0.3)
    parser.add_argument("--onnx", action="store_true", help="also time the exported ONNX model in onnxruntime")
    parser.add_argument(
        "--cases", nargs="*", default=None, help="only these cases (network is always timed), e.g. predict-json"
    )
    args = parser.parse_args()

    from mtlcli.api import to_image_tensor
    from mtlcli.engine.predict import PredictOptions, predict_sources

    if args.run:
        from mtlcli.api import load_model

        model = load_model(args.run, device=args.device)
        args.recipe = f"{model.recipe.get('name', 'run')} ({args.run})"
    else:
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
            model.fast = True
            model.predict(list(map(str, paths)), batch_size=bs, score_threshold=args.score_threshold)

        counter = iter(range(10**6))

        def command(save_images: bool, predictor=None, fast: bool = True):
            def run():
                model.fast = fast
                opts = PredictOptions(
                    score_threshold=args.score_threshold,
                    batch_size=bs,
                    workers=args.workers,
                    save_images=save_images,
                    progress=False,
                )
                predict_sources(predictor or model, [tmp / "in"], tmp / f"out{next(counter)}", opts)

            return run

        cases = {
            "network": network,
            "forward": forward,
            "api": api,
            "predict": command(True),
            "predict-json": command(False),
            "predict-json-eager": command(False, fast=False),  # Predictor.fast off: the network's eval output
        }
        if args.onnx:
            from mtlcli.api import OnnxPredictor
            from mtlcli.export import export_model

            t0 = time.perf_counter()
            from mtlcli.errors import UserError

            try:
                info = export_model(model.network.cpu(), "onnx", tmp / "model.onnx", card=model.card)
                print(f"export {time.perf_counter() - t0:.0f} s; parity {info['parity']['summary']}")
            except UserError as exc:  # random weights: near-equal scores everywhere; the file is kept
                print(f"export {time.perf_counter() - t0:.0f} s; parity check failed (timed anyway): {exc}")
            model.network.to(args.device)
            cases["predict-onnx"] = command(False, OnnxPredictor(tmp / "model.onnx"))
        agreement = semantic_agreement(model, decoded[: min(4, len(decoded))])
        if agreement is not None:
            print(f"semantic map of predict vs mtl eval's (argmax of softmax): {100 * agreement:.4f}% pixels equal")
        if args.cases:
            cases = {k: v for k, v in cases.items() if k == "network" or k in args.cases}
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
        print(f"{name:<14}{args.images / t:>10.3g}{t / net:>15.2f}x")
    if "predict-onnx" in times:
        ratio = statistics.median(times["predict-json"]) / statistics.median(times["predict-onnx"])
        print(f"onnxruntime / eager images/s (predict-onnx vs predict-json): {ratio:.2f}x")


def semantic_agreement(model, images) -> float | None:
    """Share of pixels where predict's semantic map equals the argmax of the model's own eval output."""
    from mtlcli.engine.result import output_to_result

    with torch.inference_mode():
        fast = model.raw([img.to(model.device) for img in images])
        slow = model.network([img.to(model.device) for img in images])
    if "sem_seg" not in slow[0]:
        return None
    equal = total = 0
    for f, s in zip(fast, slow, strict=True):
        a = output_to_result(f, model.det_classes, model.seg_classes, (1, 1), 1.0).semantic
        equal += int((a.cpu() == s["sem_seg"].argmax(0).cpu()).sum())
        total += a.numel()
    return equal / total


if __name__ == "__main__":
    main()
