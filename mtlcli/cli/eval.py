"""`mtl eval`: metrics of a trained model over a prepared split, or of saved predictions.

    mtl eval --run RUN | --checkpoint CKPT [--data DATA --split val] [--metric M ...] [--save-predictions DIR]
    mtl eval --predictions FILE|DIR --data DATA --split val [--metric M ...] [--cityscapes-ids]
    mtl eval --run RUN --split test-dev --submit DIR [--submit-name NAME]    (the server's files, docs/submit.md)

Prints a summary table and per-class tables (`-q`: one line); `--out FILE.json` saves everything there
and nowhere else; without --out, `--run RUN` keeps the results in RUN/eval/SPLIT.json and, for a model
that detects, the pictures beside it (pr_SPLIT.png, f1_SPLIT.png, confusion_det_SPLIT.png); a later
evaluation of the split writes SPLIT-2.json with pr_SPLIT-2.png ..., SPLIT-3 ..., never over earlier ones.
`--save-predictions DIR` writes the predictions there (`mtlcli.metrics.predictions`) and the pictures in
DIR/plots/.
The JSON's "provenance" names the mtl version, the command line and the git commit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from mtlcli.cli.common import CHECKPOINT_OPTION, DEVICE_OPTION, RUN_OPTION
from mtlcli.errors import UserError


def _fmt(v: Any, scale: float = 100.0) -> str:
    return "—" if v is None or v != v else f"{float(v) * scale:.2f}"


def _table(title: str):
    from rich.table import Table

    return Table(title=title, min_width=len(title))  # a narrow table would wrap its title


def result_line(result: dict[str, Any]) -> str:
    """One line: `split: metric value% · metric value%` (what `eval -q` prints)."""
    values = "  ".join(f"{name} {_fmt(value)}%" for name, value in result["metrics"].items())
    return f"{result.get('split', '')}: {values}".strip()


def saved_line(written: list[Path]) -> str:
    """Where `mtl eval` put its results: "saved RUN/eval/val.json; pictures in RUN/eval: pr_val.png, ..."."""
    json_files = [p for p in written if p.suffix == ".json"]
    pictures = [p for p in written if p.suffix == ".png"]
    parts = [f"saved {json_files[0]}"] if json_files else ["not saved (give --out FILE.json to keep the results)"]
    if pictures:
        parts.append(f"pictures in {pictures[0].parent}: {', '.join(p.name for p in pictures)}")
    return "; ".join(parts)


def print_results(result: dict[str, Any]) -> None:
    """Rich tables: one summary row per metric, then each metric's per-class table (values in %)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    details = result["details"]
    summary = Table(title="evaluation (%)")
    for col in ("metric", "value", "also"):
        summary.add_column(col, justify="right" if col == "value" else "left")
    for name, value in result["metrics"].items():
        d = details.get(name, {})
        if name == "miou":
            extra = f"pixel acc {_fmt(d.get('pixel_accuracy'))}  mean acc {_fmt(d.get('mean_accuracy'))}"
            extra += f"  iIoU {_fmt(d.get('miiou'))}" if "miiou" in d else ""
        elif name == "dt":
            extra = f"DT-bin pixel accuracy; mIoU of the bins {_fmt(d.get('miou'))}"
        elif name.startswith("coco"):
            s = d.get("stats", {})
            extra = "  ".join(f"{k} {_fmt(s.get(k))}" for k in ("AP50", "AP75", "APs", "APm", "APl", "AR100"))
        elif name == "pq":
            a, t, st = d.get("all", {}), d.get("things", {}), d.get("stuff", {})
            extra = f"SQ {_fmt(a.get('sq'))}  RQ {_fmt(a.get('rq'))}  things PQ {_fmt(t.get('pq'))}  "
            extra += f"stuff PQ {_fmt(st.get('pq'))}"
        elif name == "cs-inst":
            extra = f"AP50 {_fmt(d.get('ap50'))}  (Cityscapes instance AP, official script)"
        elif name == "ar":
            s = d.get("stats", {})
            extra = "  ".join(f"{k} {_fmt(s.get(k))}" for k in ("AR@1000", "ARs@100", "ARm@100", "ARl@100"))
        else:
            extra = d.get("rule", "")
        summary.add_row(name, _fmt(value), extra)
    console.print(summary)

    for name, d in details.items():
        if name in ("miou", "dt"):
            table = _table("miou: per class (%)" if name == "miou" else "dt: per distance-transform bin (%)")
            cols = ["class", "IoU"] + (["iIoU"] if "iiou" in d else []) + ["accuracy"]
            for c in cols:
                table.add_column(c, justify="left" if c == "class" else "right")
            for i, cls in enumerate(d["classes"]):
                row = (
                    [cls, _fmt(d["iou"][i])] + ([_fmt(d["iiou"][i])] if "iiou" in d else []) + [_fmt(d["accuracy"][i])]
                )
                table.add_row(*row)
        elif name in ("voc07", "voc12"):
            table = _table(f"{name}: AP@0.5 per class (%), {d['rule']}")
            for c in ("class", "AP", "ground truth", "detections"):
                table.add_column(c, justify="left" if c == "class" else "right")
            for i, cls in enumerate(d["classes"]):
                table.add_row(cls, _fmt(d["ap"][i]), str(d["num_gt"][i]), str(d["num_detections"][i]))
        elif name == "pq":
            table = _table("pq: panoptic quality per class (%)")
            for c in ("class", "kind", "PQ", "SQ", "RQ", "TP", "FP", "FN"):
                table.add_column(c, justify="left" if c in ("class", "kind") else "right")
            for c in d["classes"]:
                kind = "thing" if c["isthing"] else "stuff"
                counts = [str(c[k]) for k in ("tp", "fp", "fn")]
                table.add_row(c["name"], kind, _fmt(c["pq"]), _fmt(c["sq"]), _fmt(c["rq"]), *counts)
            for group in ("all", "things", "stuff"):
                g = d[group]
                table.add_row(f"[bold]{group}[/] ({g['n']})", "", _fmt(g["pq"]), _fmt(g["sq"]), _fmt(g["rq"]))
        elif name == "cs-inst":
            table = _table("cs-inst: Cityscapes instance AP per class (%)")
            for c in ("class", "AP", "AP50"):
                table.add_column(c, justify="left" if c == "class" else "right")
            for cls, ap, ap50 in zip(d["classes"], d["class_ap"], d["class_ap50"], strict=True):
                table.add_row(cls, _fmt(ap), _fmt(ap50))
        elif name.startswith("coco"):
            table = _table(f"{name}: AP@[.5:.95] per class (%)")
            table.add_column("class")
            table.add_column("AP", justify="right")
            for cls, ap in zip(d["classes"], d["ap"], strict=True):
                table.add_row(cls, _fmt(ap))
        else:
            table = _table(f"{name}: proposal recall (%)")
            table.add_column("measure")
            table.add_column("value", justify="right")
            for k, v in d["stats"].items():
                table.add_row(k, _fmt(v))
        console.print(table)


def free_name(folder: Path, split: str) -> str:
    """The name of a new evaluation of `split` in `folder` (RUN/eval): `split`, else `split-2`, `split-3`, ...,
    the first whose JSON and detection pictures are all absent, so that earlier results and pictures are kept."""
    from mtlcli.viz.detection import picture_names

    name, n = split, 2
    while any((folder / f).exists() for f in [f"{name}.json", *picture_names(name)]):
        name, n = f"{split}-{n}", n + 1
    return name


def write_json(path: Path, data: dict[str, Any]) -> None:
    from mtlcli.data.prepared import atomic_write_text
    from mtlcli.metrics import jsonable

    atomic_write_text(path, json.dumps(jsonable(data), indent=2, allow_nan=False))


def _device(name: str) -> str:
    from mtlcli.cli.common import resolve_device

    return resolve_device(name)


def _single_process() -> bool:
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) == 1


def run_eval(
    run: Path | None,
    checkpoint: Path | None,
    predictions: Path | None,
    data: Path | None,
    split: str | None,
    metric: list[str],
    cityscapes_ids: bool,
    out: Path | None,
    save_predictions: Path | None,
    force: bool,
    batch_size: int | None,
    device: str,
    workers: int,
    quiet: bool,
    written: list[Path] | None = None,
    submit: Path | None = None,
    submit_name: str = "mtl",
) -> dict[str, Any]:
    """Everything `mtl eval` does except printing; returns the result dict that is saved. The files written
    (the JSON, the detection pictures) are appended to `written` when given."""
    from mtlcli.metrics import METRIC_NAMES, check_metric_names
    from mtlcli.safety import refuse_protected_output

    written = [] if written is None else written
    stem: str | None = None  # the name of this evaluation's pictures in RUN/eval, once drawn

    sources = [s for s in (run, checkpoint, predictions) if s is not None]
    if len(sources) != 1:
        raise UserError("give exactly one of --run RUN, --checkpoint CKPT or --predictions FILE|DIR")
    for path, option in ((out, "--out"), (save_predictions, "--save-predictions")):
        if path is not None:
            refuse_protected_output(path, option)
    _device(device)  # a bad --device is one line whatever the source
    if out is not None and out.exists() and not force:
        raise UserError(f"--out {out} exists; choose another file or pass --force to overwrite it")
    names = check_metric_names(metric)

    if submit is not None and (predictions is not None or out is not None or save_predictions is not None or metric):
        raise UserError(
            "--submit writes a model's predictions in the server's format: give it with --run or "
            "--checkpoint only (no --predictions, --out, --save-predictions or --metric)"
        )
    if predictions is not None:
        from mtlcli.metrics.predictions import evaluate_predictions

        if data is None:
            raise UserError("--predictions needs --data DATA, the prepared dataset the predictions belong to")
        if save_predictions is not None:
            raise UserError("--save-predictions writes a model's predictions; drop it with --predictions")
        split = split or "val"
        result = evaluate_predictions(
            data, split, predictions, names or None, cityscapes_ids=cityscapes_ids, progress=not quiet
        )
        result = {"predictions": str(predictions), "data": str(data), "split": split, **result}
    else:
        from mtlcli.data.dataset import PreparedDataset
        from mtlcli.engine.checkpoint import find_run_checkpoint, load_for_eval
        from mtlcli.engine.evaluate import evaluate

        if cityscapes_ids:
            raise UserError("--cityscapes-ids describes --predictions PNGs; drop it when evaluating a model")
        dev = _device(device)
        model, recipe, root = load_for_eval(run=run, checkpoint=checkpoint, device=dev)
        root = data or root
        if root is None:
            raise UserError("the run's prepared dataset is not here; give it with --data DATA")
        split = split or recipe.get("data", {}).get("val_split") or "val"
        if submit is not None:
            from mtlcli.cli.common import model_source
            from mtlcli.engine.submit import submit_run

            if not _single_process():
                raise UserError("--submit runs in one process; run `mtl eval --submit` without torchrun")
            source = model_source(run, checkpoint)
            sub = submit_run(
                model, recipe, root, split, submit, submit_name, dev, batch_size, not quiet, force, workers, source
            )
            return {"run": str(run) if run else None, "checkpoint": str(checkpoint) if checkpoint else None,
                    "data": str(root), "split": split, "submission": sub}  # fmt: skip
        from mtlcli.data.prepared import DatasetMeta

        DatasetMeta.load(root).check_labelled(root, split)
        names = names or list(recipe.get("eval", {}).get("metrics") or [])
        if not names:
            raise UserError(f"the recipe's [eval] names no metrics; pass --metric ({', '.join(METRIC_NAMES)})")
        label_map = recipe.get("data", {}).get("label_map") or None
        # no transforms: the model resizes its own inputs and answers in the original frame — unless the
        # recipe scores at the paper's resolution ([eval] resolution)
        from mtlcli.engine.finetune import check_class_counts
        from mtlcli.engine.modelcard import model_card
        from mtlcli.engine.resolution import eval_transforms

        dataset = PreparedDataset(root, split, transforms=eval_transforms(recipe), label_map=label_map)
        check_class_counts(recipe, model_card(dataset), whose="the checkpoint's")
        bs = batch_size or int(recipe.get("eval", {}).get("batch_size") or 4)
        from mtlcli.engine.compat import check_label_set  # before any work: data of another label set

        check_label_set(
            getattr(model, "trained_classes", None),
            recipe["model"],
            dataset,
            checkpoint=sources[0],  # --run or --checkpoint (not --predictions) on this path
            data=root,
            action="eval",
        )
        # a run keeps its predictions in RUN/eval/predictions-SPLIT (for the detection pictures and for
        # `mtl viz confusion`), unless the user chose where results go (--out) or predictions go
        eval_dir = Path(run) / "eval" if run is not None else None
        keep = eval_dir is not None and out is None and save_predictions is None and _single_process()
        target = eval_dir / f"predictions-{split}" if eval_dir is not None and keep else save_predictions
        result = evaluate(
            model,
            dataset,
            names,
            device=dev,
            batch_size=bs,
            progress=not quiet,
            save_predictions=target,
            force=force or keep,
            workers=workers,
            panoptic_settings=recipe.get("eval"),
            # panoptic PNGs where the user asked for predictions or for pq, not in every RUN/eval
            save_panoptic=save_predictions is not None or "pq" in names,
        )
        # the detection pictures: in RUN/eval beside the JSON, or beside the predictions the user asked for
        pictures = eval_dir if keep else (save_predictions / "plots" if save_predictions else None)
        if (
            pictures is not None
            and target is not None
            and (target / "detections.json").is_file()
            and dataset.meta.det_classes
        ):
            from mtlcli.metrics.predictions import GroundTruth, load_detections
            from mtlcli.viz.detection import plot_detection

            gt = GroundTruth(Path(root), split, dataset.meta, dataset.coco)
            raw = json.loads((target / "detections.json").read_text())
            detections = load_detections(target / "detections.json", gt, results=raw) if raw else []
            use_07 = "voc07" in names and "voc12" not in names  # the legend's AP as the table's
            if keep and eval_dir is not None:  # the pictures are named as the JSON written below
                stem = free_name(eval_dir, split)
            result["plots"] = [
                str(p)
                for p in plot_detection(
                    dataset.coco,
                    detections,
                    dataset.meta.det_classes,
                    pictures,
                    split,
                    use_07=use_07,
                    name=stem if keep else split,
                )
            ]
        result = {
            "run": str(run) if run else None,
            # the file scored: --checkpoint, or the run's reported one (its recipe's [eval] checkpoint)
            "checkpoint": str(checkpoint) if checkpoint or run is None else str(find_run_checkpoint(Path(run))),
            "data": str(root),
            "split": split,
            **result,
        }
    from mtlcli.provenance import provenance

    result["provenance"] = provenance()
    saved = out
    if out is None and run is not None:
        saved = Path(run) / "eval" / f"{stem or free_name(Path(run) / 'eval', split)}.json"
    if saved is not None:  # --out names the one file written
        write_json(saved, result)
        written.append(saved)
    written += [Path(p) for p in result.get("plots", [])]
    return result


def submit_line(result: dict[str, Any]) -> str:
    """What `mtl eval --submit` prints: where the server's files went."""
    sub = result["submission"]
    files = [Path(f) for f in sub["files"]]
    uploads = [f for f in files if f.suffix in (".zip", ".gz")]
    root = Path(os.path.commonpath([str(f) for f in files])) if files else None
    return (
        f"wrote the {sub['server']} server's files for {result['split']} ({sub['images']} images, {len(files)} files) "
        f"in {root}; upload: {', '.join(str(f) for f in uploads)}"
    )


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_command(
        run: Path | None = RUN_OPTION,
        checkpoint: Path | None = CHECKPOINT_OPTION,
        predictions: Path | None = typer.Option(
            None,
            "--predictions",
            help="Saved predictions: a COCO results .json, or a folder with detections.json and/or <stem>.png maps.",
        ),
        data: Path | None = typer.Option(None, "--data", help="Prepared dataset (default: the recipe's)."),
        split: str | None = typer.Option(
            None, "--split", help="Split to evaluate (default: val / the recipe's val_split)."
        ),
        metric: list[str] = typer.Option(
            [],
            "--metric",
            "-m",
            help="miou, dt, voc07, voc12, coco-bbox, coco-segm, ar, pq, cs-inst (repeat or comma-separate).",
        ),
        cityscapes_ids: bool = typer.Option(
            False, "--cityscapes-ids", help="Prediction PNGs hold Cityscapes labelIds."
        ),
        out: Path | None = typer.Option(
            None,
            "--out",
            "-o",
            metavar="FILE",
            help="Save the results as JSON here (only here) "
            "[default: RUN/eval/SPLIT.json for --run, nothing otherwise].",
        ),
        save_predictions: Path | None = typer.Option(
            None, "--save-predictions", help="Write the model's predictions here."
        ),
        force: bool = typer.Option(
            False, "--force", help="Overwrite --out / --save-predictions / the files in --submit."
        ),
        batch_size: int | None = typer.Option(
            None, "--batch-size", min=1, help="Images per batch (default: the recipe's)."
        ),
        device: str = DEVICE_OPTION,
        workers: int = typer.Option(0, "--workers", min=0, help="Data-loading worker processes."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no tables: one line of results."),
        submit: Path | None = typer.Option(
            None,
            "--submit",
            metavar="DIR",
            help="Write what the split's evaluation server takes (COCO, Cityscapes, VOC) into DIR instead of "
            "scoring; works on unlabelled test splits (docs/submit.md).",
        ),
        submit_name: str = typer.Option(
            "mtl",
            "--submit-name",
            metavar="NAME",
            help="Your method's name in the servers' file names (letters, digits, - and .).",
        ),
    ) -> None:
        """Evaluate a trained model, or saved predictions, with the official metrics."""
        written: list[Path] = []
        result = run_eval(
            run,
            checkpoint,
            predictions,
            data,
            split,
            metric,
            cityscapes_ids,
            out,
            save_predictions,
            force,
            batch_size,
            device,
            workers,
            quiet,
            written,
            submit=submit,
            submit_name=submit_name,
        )
        import sys

        for note in result.get("notes", []):
            print(f"note: {note}", file=sys.stderr)
        if "submission" in result:
            print(submit_line(result))
            return
        if quiet:
            print(result_line(result))
            return
        if run is not None and result.get("checkpoint"):
            from mtlcli.engine.checkpoint import reported_checkpoint

            print(f'scored {result["checkpoint"]} (the run reports [eval] checkpoint = "{reported_checkpoint(run)}")')
        print_results(result)
        print(saved_line(written))
