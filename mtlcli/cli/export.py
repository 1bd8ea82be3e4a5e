"""`mtl export (--run RUN | --checkpoint CKPT) --format onnx|torchscript [--out FILE] [--size HxW]
[--dynamic] [--no-nms] [--iou T] [--max-det N] [--score-threshold T]`: the whole predict path (uint8
image in; boxes, scores, labels, masks, semantic out) for deployment, checked against PyTorch
(`mtlcli.export`)."""

from __future__ import annotations

from pathlib import Path

import typer

from mtlcli.cli.common import CHECKPOINT_OPTION, RUN_OPTION, model_source
from mtlcli.errors import UserError


def default_export_path(run: Path | None, checkpoint: Path, fmt: str) -> Path:
    """RUN/export/model.onnx | model.torchscript.pt; for a checkpoint, an export/ folder beside it (beside
    the run's checkpoints/ folder, never in it). Never the checkpoint's own name."""
    from mtlcli.export import DEFAULT_NAMES

    base = Path(run) / "export" if run is not None else Path(checkpoint).parent / "export"
    if run is None and Path(checkpoint).parent.name == "checkpoints":
        base = Path(checkpoint).parent.parent / "export"
    return base / DEFAULT_NAMES[fmt]


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_command(
        run: Path | None = RUN_OPTION,
        checkpoint: Path | None = CHECKPOINT_OPTION,
        fmt: str = typer.Option(
            ...,
            "--format",
            "-f",
            metavar="onnx|torchscript",
            help="The file format: ONNX (.onnx, opset 18) or TorchScript (.torchscript.pt).",
        ),
        out: Path | None = typer.Option(
            None,
            "--out",
            "-o",
            metavar="FILE",
            help="Output file [default: RUN/export/model.onnx or RUN/export/model.torchscript.pt].",
        ),
        size: str | None = typer.Option(
            None,
            "--size",
            metavar="HxW",
            help="Network input size the graph resizes images to [default: the model's]; two-stage "
            "models: SHORTxMAX (short side, long-side cap). Images of any size go in.",
        ),
        dynamic: bool = typer.Option(
            False,
            "--dynamic",
            "--dynamic-batch",
            help="Any batch size (single-stage families; two-stage graphs run one image at a time).",
        ),
        nms: bool = typer.Option(True, "--nms/--no-nms", help="Per-class NMS inside the graph."),
        iou: float | None = typer.Option(
            None, "--iou", min=0.0, max=1.0, help="NMS IoU threshold [default: the model's]."
        ),
        max_det: int | None = typer.Option(
            None, "--max-det", min=1, help="Detections kept per image [default: the model's]."
        ),
        score_threshold: float | None = typer.Option(
            None,
            "--score-threshold",
            min=0.0,
            max=1.0,
            help="Drop detections scoring at most this inside the graph [default: the model's own, e.g. 0.01].",
        ),
        force: bool = typer.Option(False, "--force", help="Overwrite an existing --out."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the output file."),
    ) -> None:
        """Export a trained model's whole predict path to ONNX or TorchScript; the file is checked against PyTorch."""
        from mtlcli.api import load_model
        from mtlcli.export import export_model, parse_size

        source = model_source(run, checkpoint)
        fmt = fmt.lower()
        if fmt not in ("onnx", "torchscript"):
            raise UserError(f"--format {fmt!r}: choose onnx or torchscript")
        model = load_model(source, device="cpu")
        if out is None:
            out = default_export_path(run, Path(str(model.checkpoint)), fmt)
        from mtlcli.safety import refuse_protected_output

        refuse_protected_output(out, "--out")  # never inside a prepared dataset or a run's checkpoints/
        if out.is_dir():
            raise UserError(f"--out {out} is a folder; give a file name")
        from mtlcli.export import sidecar_path

        for existing in (out, sidecar_path(out)):  # the file and its sidecar: neither is replaced without --force
            if existing.exists() and not force:
                raise UserError(f"--out {out}: {existing} exists; choose another file or pass --force to overwrite it")
        info = export_model(
            model.network,
            fmt,
            out,
            size=parse_size(size),
            dynamic=dynamic,
            nms=nms,
            score_thresh=score_threshold,
            iou=iou,
            max_det=max_det,
            card=model.card,
        )
        if quiet:
            print(out)
            return
        shape = "x".join(str(v) for v in info["input"]["shape"])
        print(
            f"exported {info['model']} to {out} ({fmt}, input images uint8 {shape} RGB, outputs "
            f"{', '.join(info['outputs'])}); parity with PyTorch: {info['parity']['summary']}; details in {out}.json"
        )
