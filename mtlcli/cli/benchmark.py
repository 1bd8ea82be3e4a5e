"""`mtl benchmark`: parameters, FLOPs, latency, throughput and peak memory of recipes' models, with
torchvision's reference models beside them (`--compare`) and the papers' ablation tables as presets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from mtlcli.cli.common import DEVICE_OPTION
from mtlcli.errors import UserError

# The papers' tables: recipe names (and torchvision references) timed together in one run.
PRESETS: dict[str, dict[str, Any]] = {
    "ivanet-table1": {
        "recipes": ["ivanet300", "ivanet300-det", "ivanet300-seg", "ivanet512", "ivanet512-det", "ivanet512-seg"],
        "compare": [],
    },
    "datnet-table7": {
        "recipes": ["maskrcnn-r50-coco", "datnet-light-r50-coco", "datnet-heavy-r50-coco"],
        "compare": ["tv:maskrcnn_resnet50_fpn"],
        "size": "800x1333",
        # untrained heads score every class near 1/81: keep all 100 detections so the mask heads work
        "score_threshold": 0.0,
    },
    "ladder-table1": {
        "recipes": ["densenet32x-cityscapes", "dilated8x-densenet-cityscapes", "ladderdensenet-cityscapes"],
        "compare": [],
    },
    "imtl": {
        "recipes": ["imtl-cityscapes"],
        "compare": ["tv:deeplabv3_resnet50+tv:retinanet_resnet50_fpn"],
        "size": "384x768",
    },
    "safpn": {
        "recipes": ["maskrcnn-r50-coco", "safpn-r50-coco", "ejhead-r50-coco", "safpn-ejhead-r50-coco"],
        "compare": [],
        "size": "800x1333",
        "score_threshold": 0.0,
    },
}
DEFAULT_COMPARE = [
    "tv:ssd300_vgg16",
    "tv:fasterrcnn_resnet50_fpn",
    "tv:maskrcnn_resnet50_fpn",
    "tv:retinanet_resnet50_fpn",
    "tv:deeplabv3_resnet50",
    "tv:fcn_resnet50",
]


def recipe_subject(
    name: str,
    size: tuple[int, int] | None,
    device,
    batch: int,
    train: bool,
    overrides: list[str] | None = None,
    score_threshold: float | None = None,
):
    """Build a recipe's model (never with pretrained weights) as a benchmark Subject."""
    from mtlcli.models import build_from_recipe, builder_arguments
    from mtlcli.recipes import load_recipe

    recipe = load_recipe(name, overrides)
    extra = {}
    if score_threshold is not None:
        valid = builder_arguments(recipe["model"]["name"])
        extra = {k: score_threshold for k in ("box_score_thresh", "score_thresh") if k in valid}
    model = build_from_recipe(recipe["model"], load_weights=False, **extra).to(device).eval()
    return model_subject(name, model, recipe, size, train)


def run_subject(run: Path, size: tuple[int, int] | None, device, train: bool, score_threshold: float | None = None):
    """A trained run's model (its checkpoint's weights and recipe: `load_for_eval`) as a benchmark Subject,
    named by the run directory."""
    from mtlcli.engine.checkpoint import load_for_eval

    model, recipe, _ = load_for_eval(run=run, device=device)
    if score_threshold is not None:  # the attribute each family's postprocess reads
        for key in ("box_score_thresh", "score_thresh"):
            if isinstance(getattr(model, key, None), float):
                setattr(model, key, float(score_threshold))
    return model_subject(str(run), model, recipe, size, train)


def model_subject(name: str, model, recipe: dict[str, Any], size: tuple[int, int] | None, train: bool):
    """A built model (eval mode, on its device) of `recipe` as a benchmark Subject."""
    import torch

    from mtlcli.engine.benchmark import Subject, random_targets

    if size is None:
        size = tuple(getattr(model, "input_size", None) or (512, 512))
    has_net = hasattr(model, "network") and hasattr(model, "preprocess")

    def prepare(images):
        return model.preprocess(images)[0]

    step = None
    if train:
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
        num_det = int(recipe["model"].get("num_det_classes", getattr(model, "num_det_classes", 2)) or 2)
        num_seg = int(recipe["model"].get("num_seg_classes", getattr(model, "num_seg_classes", 2)) or 2)

        def step(images):
            targets = random_targets(images, num_det, num_seg)
            losses = model(images, targets)
            sum(losses.values()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    return Subject(
        name=name,
        model=model,
        size=(size[0], size[1]),
        predict=lambda images: model(images),
        network=getattr(model, "network", None) if has_net else None,
        prepare=prepare if has_net else None,
        train_step=step,
    )


def register(app: typer.Typer) -> None:
    @app.command("benchmark")
    def benchmark(
        recipe: list[str] | None = typer.Option(None, "--recipe", "-r", help="Recipe name or path (repeatable)."),
        run: list[Path] | None = typer.Option(
            None, "--run", help="A trained run: its checkpoint's model and recipe (repeatable)."
        ),
        all_recipes: bool = typer.Option(
            False, "--all", help="Every recipe in recipes/ (full-size models: slow on a CPU)."
        ),
        preset: str | None = typer.Option(None, help=f"A paper table: {', '.join(PRESETS)}."),
        size: str | None = typer.Option(
            None, "--size", metavar="HxW", help="Input HxW (default: each model's own input size)."
        ),
        batch: int = typer.Option(1, "--batch-size", min=1, help="Images per forward."),
        batch_old: int | None = typer.Option(None, "--batch", min=1, hidden=True),  # the name before 0.2
        device: str = DEVICE_OPTION,
        amp: str | None = typer.Option(
            None, "--amp", metavar="bf16|fp16", help="bf16 or fp16 autocast (CUDA only) [default: off, fp32]."
        ),
        channels_last: bool = typer.Option(False, "--channels-last", help="Run convolutions in channels_last."),
        compile: bool = typer.Option(False, "--compile", help="torch.compile the network first."),
        compare: bool = typer.Option(False, "--compare", help="Add torchvision's reference models at the same size."),
        reference: list[str] | None = typer.Option(
            None,
            "--reference",
            help="One torchvision reference (repeatable; 'a+b' runs a then b): " + ", ".join(DEFAULT_COMPARE),
        ),
        iterations: int = typer.Option(10, min=1, help="Timed runs per model."),
        warmup: int = typer.Option(2, min=0, help="Untimed runs per model first."),
        train: bool = typer.Option(False, "--train-step", help="Also time a full training step."),
        train_old: bool = typer.Option(
            False, "--train", hidden=True
        ),  # the name before 0.2 (--train N counts images elsewhere)
        out: Path | None = typer.Option(None, "--out", "-o", metavar="FILE", help="Write the results as JSON."),
        markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table (for the README)."),
        force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
        set_: list[str] | None = typer.Option(
            None, "--set", help="Recipe override for every recipe, e.g. model.width=256."
        ),
        score_threshold: float | None = typer.Option(
            None,
            "--score-threshold",
            help="Detection score threshold for every model (0 keeps all detections of untrained heads) "
            "[default: each recipe's; a --preset's own].",
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display while measuring."),
    ) -> None:
        """Measure parameters, FLOPs, latency, images/s and peak memory of models, alternating runs so that
        ratios are fair.

        Latency is timed twice: the network alone and the full predict path (resize, network, postprocess).
        `--run RUN` measures the model a run trained (its recipe and checkpoint), `--recipe` a recipe's."""
        import torch

        from mtlcli.engine import benchmark as bm

        if amp not in (None, "bf16", "fp16"):
            raise UserError(f"--amp {amp!r}: choose bf16 or fp16")
        from mtlcli.cli.common import resolve_device

        dev = torch.device(resolve_device(device))
        batch = batch_old if batch_old is not None else batch
        train = train or train_old
        if amp is not None and dev.type != "cuda":
            raise UserError(
                f"--amp {amp} needs a CUDA device (autocast is not timed on {dev.type}); drop --amp or use --device "
                "cuda"
            )
        if out is not None:
            from mtlcli.safety import refuse_protected_output

            refuse_protected_output(out, "--out")
        if out is not None and out.exists() and not force:
            raise UserError(f"--out {out} exists; choose another file or pass --force")
        fixed = bm.parse_size(size) if size else None
        names = list(recipe or [])
        refs: list[str] = []
        overrides = list(set_ or [])
        if preset:
            if preset not in PRESETS:
                raise UserError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
            names += PRESETS[preset]["recipes"]
            refs += PRESETS[preset]["compare"]
            if score_threshold is None:
                score_threshold = PRESETS[preset].get("score_threshold")
            if fixed is None and "size" in PRESETS[preset]:
                fixed = bm.parse_size(PRESETS[preset]["size"])
        if all_recipes:
            from mtlcli.recipes import available_recipes

            names += [n for n in available_recipes() if n not in names]
        if compare:
            refs += [r for r in DEFAULT_COMPARE if r not in refs]
        for key in reference or []:
            unknown = [k for k in key.split("+") if k not in bm.REFERENCES]
            if unknown:
                raise UserError(f"unknown reference {unknown[0]!r}; valid: {', '.join(bm.REFERENCES)}")
            refs.append(key)
        runs = list(run or [])
        if not names and not refs and not runs:
            raise UserError(
                "nothing to benchmark: give --recipe NAME, --run RUN, --preset NAME or --all (see `mtl recipes list`)"
            )

        from mtlcli.engine.limits import check_batch_fits

        check_batch_fits(batch, fixed, dev, "--batch")
        subjects = []
        for n in names:
            subjects.append(recipe_subject(n, fixed, dev, batch, train, overrides, score_threshold))
            check_batch_fits(batch, subjects[-1].size, dev, "--batch")
        for r in runs:
            subjects.append(run_subject(r, fixed, dev, train, score_threshold))
            check_batch_fits(batch, subjects[-1].size, dev, "--batch")
        ref_size = fixed or (subjects[0].size if subjects else (512, 512))
        for key in refs:
            parts = [bm.reference_subject(k, ref_size, dev, score_threshold) for k in key.split("+")]
            subjects.append(parts[0] if len(parts) == 1 else bm.combined_subject(key, parts))
        for s in subjects:
            if channels_last:
                s.model.to(memory_format=torch.channels_last)
            if compile and s.network is not None:
                s.network = torch.compile(s.network)

        from rich.console import Console

        console = Console(stderr=True, quiet=quiet)
        with console.status("benchmarking ...") as status:
            rows = bm.run_benchmark(
                subjects,
                batch=batch,
                device=dev,
                iterations=iterations,
                warmup=warmup,
                amp=amp,
                train=train,
                progress=lambda msg: status.update(f"benchmarking: {msg}"),
            )
        env = bm.environment(dev, amp)
        result = {
            "environment": env,
            "iterations": iterations,
            "settings": {"score_threshold": score_threshold, "overrides": overrides, "batch": batch},
            "results": rows,
        }
        print_table(result, markdown)
        if out is not None:
            from mtlcli.safety import atomic_write_text

            atomic_write_text(out, json.dumps(result, indent=2))
            Console().print(f"saved {out}")


COLUMNS = [
    ("model", "name", "{}"),
    ("size", "size", "{0[0]}x{0[1]}"),
    ("params (M)", "params", lambda v: f"{v / 1e6:.2f}"),
    ("GFLOPs", "gflops", "{:.1f}"),
    ("net ms", "net_median_ms", "{:.1f}"),
    ("full ms", "full_median_ms", "{:.1f}"),
    ("full p90", "full_p90_ms", "{:.1f}"),
    ("img/s", "images_per_s", "{:.2f}"),
    ("full/net", "post_ratio", "{:.2f}"),
    ("peak MB", "peak_mem_mb", "{:.0f}"),
    ("train ms", "train_median_ms", "{:.1f}"),
]


def _cell(row: dict[str, Any], key: str, fmt) -> str:
    if key not in row:
        return "—"
    return fmt(row[key]) if callable(fmt) else fmt.format(row[key])


def print_table(result: dict[str, Any], markdown: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = result["results"]
    cols = [c for c in COLUMNS if any(c[1] in r for r in rows)]
    env = result["environment"]
    caption = ", ".join(f"{k} {v}" for k, v in env.items()) + f"; {result['iterations']} timed runs, medians"
    if markdown:
        print("| " + " | ".join(c[0] for c in cols) + " |")
        print("|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(_cell(r, k, f) for _, k, f in cols) + " |")
        print(f"\n{caption}")
        return
    table = Table(title="mtl benchmark", caption=caption + "; peak MB = memory above the loaded model")
    for title, _, _ in cols:
        table.add_column(title, justify="left" if title == "model" else "right")
    for r in rows:
        table.add_row(*[_cell(r, k, f) for _, k, f in cols])
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)
