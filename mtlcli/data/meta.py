"""`dataset.json`, the description of a prepared dataset (DESIGN.md §3): `DatasetMeta`.

Its own module so that readers of the description (`mtlcli.data.overlap`, ...) need none of the prepare
machinery in `mtlcli.data.prepared`, which re-exports these names.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mtlcli.errors import UserError
from mtlcli.safety import atomic_write_text

FORMAT_VERSION = 1
IGNORE_INDEX = 255


@dataclass
class DatasetMeta:
    """Contents of `dataset.json`."""

    name: str
    source: str
    splits: list[str]
    det_classes: list[str]
    seg_classes: list[str]
    palette: list[list[int]]
    ignore_index: int = IGNORE_INDEX
    dt_thresholds: list[float] = field(default_factory=lambda: [0.2, 0.4])
    format_version: int = FORMAT_VERSION
    # the source annotations' own category id of each det class (COCO-format data); empty = 1..K
    det_category_ids: list[int] = field(default_factory=list)
    # {train split: {eval split: {"images": shared count, "example": file}}} (mtlcli.data.overlap)
    overlap: dict[str, Any] = field(default_factory=dict)
    # splits without ground truth (test-server images): images and categories only
    unlabelled: list[str] = field(default_factory=list)
    # scene data (mtlcli/data/panoptic.py): seg classes that are things; each seg class's panoptic
    # category id in the source (COCO panoptic data); empty = the seg classes named like det classes, 1..C
    thing_classes: list[str] = field(default_factory=list)
    panoptic_category_ids: list[int] = field(default_factory=list)

    def save(self, root: str | Path) -> None:
        data = {
            "format_version": self.format_version,
            **{k: v for k, v in asdict(self).items() if k != "format_version"},
        }
        for key in ("thing_classes", "panoptic_category_ids"):  # written by scene data only
            if not data[key]:
                del data[key]
        atomic_write_text(Path(root) / "dataset.json", json.dumps(data, indent=2))

    @classmethod
    def load(cls, root: str | Path) -> DatasetMeta:
        """Read and validate `root/dataset.json`; a missing or malformed file is a UserError."""
        path = Path(root) / "dataset.json"
        if not Path(root).is_dir():
            raise UserError(
                f"{root}: no such prepared dataset — create one with mtl prepare (`mtl prepare --help` lists the "
                "datasets it reads)"
            )
        if not path.is_file():
            raise UserError(
                f"{path} is missing: {root} is not a prepared dataset — prepare it with mtl prepare first (`mtl "
                "prepare --help`)"
            )
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise UserError(f"{path} is not valid JSON ({exc}) — prepare the dataset again") from None
        required = ["name", "source", "splits", "det_classes", "seg_classes", "palette"]
        missing = [k for k in required if k not in data]
        if missing:
            raise UserError(f"{path} lacks {', '.join(missing)} — prepare the dataset again")
        if data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise UserError(f"{path} has format_version {data['format_version']}, this mtl reads {FORMAT_VERSION}")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def check_split(self, root: str | Path, split: str) -> None:
        if split not in self.splits:
            raise UserError(f"split {split!r} is not in {root}; available splits: {', '.join(self.splits)}")

    def check_labelled(self, root: str | Path, split: str, action: str = "score") -> None:
        """A UserError when `split` is unlabelled: there is no ground truth to `action` (score, train) on."""
        if split in self.unlabelled:
            raise UserError(
                f"split {split!r} of {root} is unlabelled (test-server images, no ground truth): nothing to {action} "
                f"on it — write the server's files with `mtl eval --run RUN --split {split} --submit DIR`, "
                "or look at predictions with `mtl predict IMAGES --run RUN`"
            )
