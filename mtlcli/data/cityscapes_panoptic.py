"""Cityscapes' official panoptic ground truth of a Cityscapes tree, written by cityscapesscripts' own
`createPanopticImgs.convert2panoptic` (the synthetic city writes it: `generate_synthetic(panoptic=True)`).

    SRC/gtFine/cityscapes_panoptic_<split>.json
        COCO panoptic JSON as createPanopticImgs writes it for the real dataset: images (id
        "<city>_<seq>_<frame>", file_name "<id>_gtFine_leftImg8bit.png"), annotations (file_name
        "<id>_gtFine_panoptic.png", segments_info with category_id = labelId, iscrowd for the
        instance-less pixels of a thing class, i.e. the "*group" regions), categories (the labels evaluated
        by Cityscapes, isthing = hasInstances)
    SRC/gtFine/cityscapes_panoptic_<split>/<id>_gtFine_panoptic.png
        RGB, segment id = R + 256 G + 65536 B = the instanceIds value (labelId * 1000 + k for an
        instance, labelId for stuff and crowd), 0 = void (labels ignored in evaluation)

These are the files `mtl prepare coco-panoptic --json SRC/gtFine/cityscapes_panoptic_val.json --png-dir
SRC/gtFine/cityscapes_panoptic_val --images SRC/leftImg8bit/val` and cityscapesscripts'
`evalPanopticSemanticLabeling` read. `prepare cityscapes` ignores them (it reads gtFine/<split>/<city>/).

Written atomically: convert2panoptic writes into a hidden temporary folder inside gtFine/
(".cityscapes_panoptic.XXXX.tmp", removed on failure or by the next call), each file is fsynced, the PNG
folder is renamed into place and the JSON renamed last — a killed run leaves no JSON under its final
name, and a JSON under its final name always has its complete PNG folder.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mtlcli.safety import TMP_SUFFIX

TMP_PREFIX = ".cityscapes_panoptic."


def panoptic_names(split: str) -> tuple[str, str]:
    """(JSON file name, PNG folder name) createPanopticImgs gives a split (labelIds, not trainIds)."""
    return f"cityscapes_panoptic_{split}.json", f"cityscapes_panoptic_{split}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # not every file system syncs folders
        pass
    finally:
        os.close(fd)


def remove_panoptic(gt: Path, split: str) -> None:
    """Remove a split's panoptic files (the JSON first, so no JSON is left without its PNGs)."""
    json_name, folder = panoptic_names(split)
    (gt / json_name).unlink(missing_ok=True)
    if (gt / folder).is_dir():
        shutil.rmtree(gt / folder)


def write_cityscapes_panoptic(root: str | Path, splits: Sequence[str]) -> list[str]:
    """Run cityscapesscripts' `convert2panoptic` over ROOT/gtFine/<split>/*/*_instanceIds.png for each split
    and move its output into ROOT/gtFine/ (module docstring), replacing earlier panoptic files of the split.
    Its progress printing is swallowed. Splits without instanceIds PNGs are left out (convert2panoptic
    would exit). Returns the splits written."""
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    gt = Path(root) / "gtFine"
    for stale in gt.glob(f"{TMP_PREFIX}*{TMP_SUFFIX}"):  # what a killed run left
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    todo = [s for s in splits if next((gt / s).glob("*/*_instanceIds.png"), None) is not None]
    if not todo:
        return []
    tmp = Path(tempfile.mkdtemp(dir=gt, prefix=TMP_PREFIX, suffix=TMP_SUFFIX))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            convert2panoptic(str(gt), str(tmp), setNames=list(todo))
        for split in todo:
            json_name, folder = panoptic_names(split)
            # fsync from a few threads: the file system commits them together (360 PNGs: ~0.03 s, not ~1.3 s)
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(_fsync, [*(tmp / folder).iterdir(), tmp / folder, tmp / json_name]))
            (gt / json_name).unlink(missing_ok=True)  # no JSON of the old folder while the folders swap
            if (gt / folder).exists() or (gt / folder).is_symlink():
                os.rename(gt / folder, tmp / f"{folder}.old")
            os.rename(tmp / folder, gt / folder)
            os.replace(tmp / json_name, gt / json_name)
        _fsync(gt)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return list(todo)
