"""`mtl export (--run RUN | --checkpoint CKPT) --format onnx|torchscript [--out FILE] [--size HxW]
[--dynamic-batch]`: write the model for deployment and check the file against PyTorch (`mtlcli.export`)."""

from __future__ import annotations

from pathlib import Path

import typer

from mtlcli.cli.common import CHECKPOINT_OPTION, RUN_OPTION, model_source
from mtlcli.errors import UserError


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
            help="The file format: ONNX (.onnx) or TorchScript (.pt).",
        ),
        out: Path | None = typer.Option(
            None,
            "--out",
            "-o",
            metavar="FILE",
            help="Output file [default: RUN/export/model.onnx|.pt, or next to the checkpoint].",
        ),
        size: str | None = typer.Option(
            None, "--size", metavar="HxW", help="Input size HxW [default: the model's input size]."
        ),
        dynamic_batch: bool = typer.Option(
            False, "--dynamic-batch", help="Any batch size (ONNX: a symbolic batch axis)."
        ),
        force: bool = typer.Option(False, "--force", help="Overwrite an existing --out."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the output file."),
    ) -> None:
        """Export a trained model to ONNX or TorchScript; the written file is checked against PyTorch."""
        from mtlcli.api import load_model, resolve_checkpoint
        from mtlcli.export import export_model, parse_size

        source = model_source(run, checkpoint)
        fmt = fmt.lower()
        if fmt not in ("onnx", "torchscript"):
            raise UserError(f"--format {fmt!r}: choose onnx or torchscript")
        suffix = ".onnx" if fmt == "onnx" else ".pt"
        model = load_model(source, device="cpu")
        if out is None:
            ckpt = resolve_checkpoint(source)  # the file load_model read
            base = Path(run) / "export" if run is not None else ckpt.parent
            if base.name == "checkpoints":  # never beside the run's own checkpoints
                base = base.parent / "export"
            out = base / f"{ckpt.stem}{suffix}"
        from mtlcli.safety import refuse_protected_output

        refuse_protected_output(out, "--out")  # never inside a prepared dataset or a run's checkpoints/
        from mtlcli.export import sidecar_path

        for existing in (out, sidecar_path(out)):  # the file and its sidecar: neither is replaced without --force
            if existing.exists() and not force:
                raise UserError(f"--out {out}: {existing} exists; choose another file or pass --force to overwrite it")
        if out.is_dir():
            raise UserError(f"--out {out} is a folder; give a file name")
        info = export_model(
            model.network, fmt, out, size=parse_size(size), dynamic_batch=dynamic_batch, card=model.card
        )
        if quiet:
            print(out)
            return
        p = info["parity"]
        shape = "x".join(str(v) for v in info["input"]["shape"])
        print(
            f"exported {info['model']} to {out} ({fmt}, input images {shape}, {len(info['outputs'])} outputs); "
            f"parity with PyTorch: max |diff| {p['max_abs_diff']:.2e} (tolerance {p['atol']} + {p['rtol']} x |value|)"
            f"; details in {out}.json"
        )
