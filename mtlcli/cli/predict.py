"""`mtl predict SOURCE... (--run RUN | --checkpoint CKPT) [--out DIR] ...`: a trained model on your own
images, folders, glob patterns and videos (see `mtlcli.engine.predict` for what is written)."""

from __future__ import annotations

from pathlib import Path

import typer

from mtlcli.cli.common import CHECKPOINT_OPTION, DEVICE_OPTION, RUN_OPTION, model_source


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict_command(
        sources: list[str] = typer.Argument(
            ..., help="Image files, folders (searched recursively), glob patterns (quote them) and video files."
        ),
        run: Path | None = RUN_OPTION,
        checkpoint: Path | None = CHECKPOINT_OPTION,
        out: Path | None = typer.Option(
            None, "--out", "-o", metavar="DIR", help="Output folder [default: runs/predict/expN]."
        ),
        device: str = DEVICE_OPTION,
        score_threshold: float = typer.Option(
            0.3, "--score-threshold", min=0.0, max=1.0, help="Keep detections scoring at least this."
        ),
        batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per batch on the device."),
        workers: int = typer.Option(2, "--workers", min=0, help="Processes decoding images."),
        save_json: bool = typer.Option(
            True, "--save-json/--no-save-json", help="Write detections.json, images.json and the semantic label PNGs."
        ),
        save_images: bool = typer.Option(
            True, "--save-images/--no-save-images", help="Write the overlays (and annotated videos)."
        ),
        save_masks: bool = typer.Option(False, "--save-masks", help="Add instance masks (RLE) to the JSON results."),
        force: bool = typer.Option(
            False, "--force", help="Write into a non-empty --out (files there may be overwritten)."
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Predict with a trained model: overlays, COCO-style detections, semantic label maps, annotated videos."""
        from mtlcli.api import load_model
        from mtlcli.engine.predict import PredictOptions, default_out, predict_sources

        model = load_model(model_source(run, checkpoint), device=device)
        opts = PredictOptions(
            score_threshold=score_threshold,
            batch_size=batch_size,
            workers=workers,
            save_json=save_json,
            save_images=save_images,
            save_masks=save_masks,
            progress=not quiet,
        )
        summary = predict_sources(model, sources, out or default_out(), opts, force=force)
        for path, reason in summary.skipped:
            print(f"skipped {path}: {reason}")
        if summary.skipped and not summary.images and not summary.frames:
            from mtlcli.errors import UserError

            raise UserError(
                f"nothing was predicted: all {len(summary.skipped)} input(s) were skipped (listed above) — "
                "give readable images or videos"
            )
        what = f"{summary.images} images" + (f" + {summary.frames} video frames" if summary.frames else "")
        print(
            f"predicted {what} in {summary.seconds:.1f} s ({summary.images_per_s:.1f} images/s) "
            f"-> {summary.out}" + (f"; {len(summary.skipped)} skipped" if summary.skipped else "")
        )
