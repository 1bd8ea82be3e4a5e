"""`mtl predict SOURCE... (--run RUN | --checkpoint CKPT) [--out DIR] ...`: a trained model on your own
images, folders, glob patterns and videos (see `mtlcli.engine.predict` for what is written);
`mtl predict --run RUN --data DATA [--split val]`: a prepared split, keyed to its own image ids
(`mtlcli.engine.predict_data`), for `mtl eval --predictions OUT --data DATA`."""

from __future__ import annotations

from pathlib import Path

import typer

from mtlcli.cli.common import CHECKPOINT_OPTION, DEVICE_OPTION, RUN_OPTION, model_source


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict_command(
        sources: list[str] | None = typer.Argument(
            None,
            help="Image files, folders (searched recursively), glob patterns (quote them) and video files "
            "(or --data DATA).",
        ),
        run: Path | None = RUN_OPTION,
        checkpoint: Path | None = CHECKPOINT_OPTION,
        model_file: Path | None = typer.Option(
            None, "--model", metavar="ONNX", help="An exported .onnx model (`mtl export`), run by onnxruntime."
        ),
        iou: float | None = typer.Option(
            None, "--iou", min=0.0, max=1.0, help="NMS IoU threshold [default: the model's]."
        ),
        max_det: int | None = typer.Option(None, "--max-det", min=1, help="Keep at most N detections per image."),
        classes: str | None = typer.Option(
            None, "--classes", metavar="NAMES", help="Keep only these classes (names or labels 1..K, comma-separated)."
        ),
        size: str | None = typer.Option(
            None, "--size", metavar="HxW", help="Network input size [default: the model's; two-stage: SHORTxMAX]."
        ),
        data: Path | None = typer.Option(
            None, "--data", help="Predict a split of this prepared dataset, keyed to its image ids (no SOURCES)."
        ),
        split: str | None = typer.Option(
            None, "--split", help="The split of --data [default: the recipe's val_split, else val]."
        ),
        coco_json: Path | None = typer.Option(
            None, "--coco-json", metavar="FILE", help="Key the images to the ids of this COCO JSON, by file name."
        ),
        out: Path | None = typer.Option(
            None, "--out", "-o", metavar="DIR", help="Output folder [default: runs/predict/expN]."
        ),
        device: str = DEVICE_OPTION,
        score_threshold: float | None = typer.Option(
            None,
            "--score-threshold",
            min=0.0,
            max=1.0,
            help="Keep detections scoring at least this [default: 0.3; with --data or --coco-json, 0.3 for the "
            "overlays and every detection in detections.json, as `mtl eval` scores them].",
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
        panoptic: bool = typer.Option(
            False, "--panoptic", help="Write panoptic.json + panoptic/ PNGs (COCO panoptic format; docs/panoptic.md)."
        ),
        force: bool = typer.Option(
            False, "--force", help="Write into a non-empty --out (files there may be overwritten)."
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Predict with a trained model: overlays, COCO-style detections, semantic label maps, annotated videos."""
        from mtlcli.api import load_model
        from mtlcli.engine.predict import PredictOptions, default_out, expand_sources, predict_sources
        from mtlcli.errors import UserError
        from mtlcli.export import parse_size

        if data is not None and sources:
            raise UserError("give SOURCES or --data DATA, not both")
        if data is None and not sources:
            raise UserError("give images, folders or videos to predict (SOURCES), or a prepared dataset with --data")
        if data is None and split is not None:
            raise UserError("--split chooses the split of --data DATA; give --data too, or drop --split")
        if data is not None and coco_json is not None:
            raise UserError("--coco-json keys plain files; with --data the dataset's own ids are used — drop it")
        if model_file is not None:
            if run is not None or checkpoint is not None:
                raise UserError("give one model: --run, --checkpoint or --model")
            if model_file.suffix.lower() != ".onnx":
                raise UserError(
                    f"--model {model_file}: give an .onnx file written by `mtl export` (or use --checkpoint)"
                )
            model = load_model(model_file)
        else:
            model = load_model(model_source(run, checkpoint), device=device)
        decoder = None
        if data is not None:
            from mtlcli.engine.predict_data import split_sources

            items, decoder = split_sources(model, data, split)
        else:
            items = expand_sources(sources or [])
            if coco_json is not None:
                from mtlcli.engine.predict_data import coco_json_ids

                coco_json_ids(items, coco_json)
        keyed = data is not None or coco_json is not None  # predictions to evaluate: keep every detection
        opts = PredictOptions(
            iou=iou,
            max_det=max_det,
            classes=model.class_ids(classes.split(",")) if classes else None,
            size=parse_size(size),
            score_threshold=0.3 if score_threshold is None else score_threshold,
            json_threshold=0.0 if keyed and score_threshold is None else None,
            batch_size=batch_size,
            workers=workers,
            save_json=save_json,
            save_images=save_images,
            save_masks=save_masks,
            progress=not quiet,
            panoptic=panoptic,
        )
        summary = predict_sources(model, items, out or default_out(), opts, force=force, decoder=decoder)
        for path, reason in summary.skipped:
            print(f"skipped {path}: {reason}")
        if summary.skipped and not summary.images and not summary.frames:
            raise UserError(
                f"nothing was predicted: all {len(summary.skipped)} input(s) were skipped (listed above) — "
                "give readable images or videos"
            )
        what = _count(summary.images, "image") + (
            f" + {_count(summary.frames, 'video frame')}" if summary.frames else ""
        )
        print(
            f"predicted {what} in {summary.seconds:.1f} s ({summary.images_per_s:.1f} images/s) "
            f"-> {summary.out}" + (f"; {len(summary.skipped)} skipped" if summary.skipped else "")
        )


def _count(n: int, noun: str) -> str:
    """ "1 image", "3 images"."""
    return f"{n} {noun}" + ("" if n == 1 else "s")
