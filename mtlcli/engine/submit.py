"""Run a model over a prepared split and write what the split's evaluation server takes
(`mtl eval --run RUN --split test-dev --submit DIR`; formats in `mtlcli.metrics.submit`).

The split may be unlabelled (test-server images: COCO test-dev, Cityscapes test, VOC2012 test) or
labelled (a val split, to check a submission against a score computed here). Outputs are brought back
to each image's original pixel frame as in `mtlcli.engine.evaluate` (boxes scaled, masks and semantic
scores resized) before they are written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtlcli.errors import UserError
from mtlcli.models.base import eval_mode


def _semantic_to_original(output: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """`sem_seg` [C, h, w] resized (bilinear) to the source image's (H, W) where the split was resized."""
    orig = tuple(int(v) for v in target.get("orig_size", ()))
    if "sem_seg" not in output or not orig or tuple(output["sem_seg"].shape[-2:]) == orig:
        return output
    scores = torch.nn.functional.interpolate(output["sem_seg"][None].float(), size=orig, mode="bilinear")
    return {**output, "sem_seg": scores[0]}


def check_submit_out(out: Path, force: bool) -> None:
    """--submit DIR: never inside a prepared dataset or a run's checkpoints; a non-empty folder needs --force."""
    from mtlcli.safety import refuse_protected_output

    refuse_protected_output(out, "--submit")
    if out.exists() and not out.is_dir():
        raise UserError(f"--submit {out} exists and is not a folder; choose another path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--submit {out} is not empty; choose another folder or pass --force to replace its files")


@torch.inference_mode()
def write_submission(
    model: nn.Module,
    dataset: Any,
    out: str | Path,
    *,
    name: str = "mtl",
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    progress: bool = True,
    force: bool = False,
    workers: int = 0,
) -> dict[str, Any]:
    """Predict every image of `dataset` (a PreparedDataset) and write the server's files into `out`.

    Returns {"server": "coco" | "cityscapes" | "voc", "files": [paths written], "images": count}."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mtlcli.data.dataset import collate
    from mtlcli.engine.evaluate import _to_original_frame
    from mtlcli.metrics.predictions import source_id_maps
    from mtlcli.metrics.submit import check_name, open_submission, server_of

    out = Path(out).expanduser()
    check_name(name)
    server = server_of(dataset.meta)
    check_submit_out(out, force)
    if len(dataset) == 0:
        raise UserError("the split has no images; nothing to submit")
    images = dataset.coco.dataset["images"]
    identity = getattr(getattr(dataset, "label_map", None), "det_ids", None)
    identity = identity is None or identity == {k: k for k in range(1, len(dataset.det_classes) + 1)}
    maps = source_id_maps(dataset.meta, images, identity) if server == "coco" else None
    semantic = (Path(dataset.root) / dataset.split / "semantic").is_dir()
    writer = open_submission(out, dataset.meta, dataset.split, images, name, id_maps=maps, semantic=semantic)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate
    )
    model.to(device)
    columns = [TextColumn("[bold]submit[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    try:
        with eval_mode(model), Progress(*columns, disable=not progress) as bar:
            task = bar.add_task("submit", total=len(dataset))
            for batch, targets in loader:
                outputs = model([img.to(device) for img in batch])
                for output, target in zip(outputs, targets, strict=True):
                    output = _semantic_to_original(_to_original_frame(output, target), target)
                    writer.add(int(target["image_id"]), output)
                bar.advance(task, len(batch))
        files = writer.close()
    except BaseException:
        writer.abort()
        raise
    return {"server": server, "files": [str(f) for f in files], "images": len(dataset)}


def submit_run(
    model: nn.Module,
    recipe: dict[str, Any],
    root: Path,
    split: str,
    out: Path,
    name: str,
    device: str,
    batch_size: int | None,
    progress: bool,
    force: bool,
    workers: int,
    source: Path,
) -> dict[str, Any]:
    """`mtl eval --run RUN --split SPLIT --submit DIR`: the split read as the recipe scores it (label map,
    `[eval] resolution`), the model checked against its classes, then `write_submission`.
    `source` (the run or checkpoint) names the model in a class-set error."""
    from mtlcli.data.dataset import PreparedDataset
    from mtlcli.engine.compat import check_label_set
    from mtlcli.engine.resolution import eval_transforms

    label_map = recipe.get("data", {}).get("label_map") or None
    dataset = PreparedDataset(root, split, transforms=eval_transforms(recipe), label_map=label_map)
    trained = getattr(model, "trained_classes", None)
    check_label_set(trained, recipe["model"], dataset, checkpoint=source, data=root, action="eval")
    bs = batch_size or int(recipe.get("eval", {}).get("batch_size") or 4)
    return write_submission(
        model, dataset, out, name=name, device=device, batch_size=bs, progress=progress, force=force, workers=workers
    )
