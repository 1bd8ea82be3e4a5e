"""The synthetic city writes Cityscapes' panoptic ground truth: createPanopticImgs' own files under their
official names, never a half JSON under its final name, replaced or removed when the city is redrawn,
ignored by `prepare cityscapes`; the quickstart still reuses a city by its parameters."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtlcli.data.synthetic import MARKER, generate_synthetic

create = pytest.importorskip("cityscapesscripts.preparation.createPanopticImgs")


def _panoptic_digest(root: Path) -> dict[str, str]:
    gt = root / "gtFine"
    files = [*gt.glob("cityscapes_panoptic_*.json"), *gt.glob("cityscapes_panoptic_*/*")]
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


def test_official_names_and_createpanopticimgs_bytes(synthetic_source: Path, tmp_path: Path) -> None:
    gt = synthetic_source / "gtFine"
    assert sorted(p.name for p in gt.iterdir()) == [
        "cityscapes_panoptic_train",
        "cityscapes_panoptic_train.json",
        "cityscapes_panoptic_val",
        "cityscapes_panoptic_val.json",
        "train",
        "val",
    ]  # no temporary folder left
    from cityscapesscripts.helpers.labels import labels

    evaluated = [(lab.id, lab.name, int(lab.hasInstances)) for lab in labels if not lab.ignoreInEval]
    for split, n in (("train", 6), ("val", 3)):
        data = json.loads((gt / f"cityscapes_panoptic_{split}.json").read_text())
        ids = sorted(
            p.name.removesuffix("_leftImg8bit.png") for p in (synthetic_source / "leftImg8bit" / split).glob("*/*.png")
        )
        assert len(ids) == n and [im["id"] for im in data["images"]] == ids
        assert [im["file_name"] for im in data["images"]] == [f"{i}_gtFine_leftImg8bit.png" for i in ids]
        assert [a["file_name"] for a in data["annotations"]] == [f"{i}_gtFine_panoptic.png" for i in ids]
        assert sorted(p.name for p in (gt / f"cityscapes_panoptic_{split}").iterdir()) == [
            f"{i}_gtFine_panoptic.png" for i in ids
        ]
        assert [(c["id"], c["name"], c["isthing"]) for c in data["categories"]] == evaluated
        for ann in data["annotations"]:  # the PNG's segment ids are the instanceIds values
            city = ann["image_id"].split("_")[0]
            inst = np.array(Image.open(gt / split / city / f"{ann['image_id']}_gtFine_instanceIds.png"), np.int64)
            rgb = np.array(Image.open(gt / f"cityscapes_panoptic_{split}" / ann["file_name"]), np.int64)
            seg = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
            assert {s["id"] for s in ann["segments_info"]} == set(np.unique(seg[seg > 0]).tolist())
            assert (seg[seg > 0] == inst[seg > 0]).all()
    # byte for byte what the official script writes for these gtFine files
    (tmp_path / "ref").mkdir()
    with contextlib.redirect_stdout(io.StringIO()):
        create.convert2panoptic(str(gt), str(tmp_path / "ref"), setNames=["train", "val"])
    ref = {
        p.relative_to(tmp_path / "ref").as_posix(): p.read_bytes() for p in (tmp_path / "ref").rglob("*") if p.is_file()
    }
    ours = {k: (gt / k).read_bytes() for k in ref}
    assert len(ref) == 2 + 6 + 3 and ours == ref
    assert json.loads((synthetic_source / MARKER).read_text())["panoptic"] is True


def test_quiet(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    generate_synthetic(tmp_path / "city", train=1, val=1, size=(32, 64), quiet=True)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_a_killed_write_leaves_no_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = create.convert2panoptic

    def killed(gt, out, **kw):  # the official script is stopped while it writes its JSON
        real(gt, out, **kw)
        json_file = Path(out) / f"cityscapes_panoptic_{kw['setNames'][0]}.json"
        json_file.write_text(json_file.read_text()[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(create, "convert2panoptic", killed)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(tmp_path / "city", train=2, val=1, size=(32, 64), quiet=True)
    gt = tmp_path / "city" / "gtFine"
    assert sorted(p.name for p in gt.iterdir()) == ["train", "val"]  # no JSON, no PNG folder, no temporary
    from mtlcli.cli.quickstart import _made_with, _synthetic_params

    assert not _made_with(tmp_path / "city", _synthetic_params(2, 1, (32, 64), 0))  # no complete city to reuse


def test_a_stale_temporary_folder_is_removed(tmp_path: Path) -> None:
    from mtlcli.data.cityscapes_panoptic import write_cityscapes_panoptic

    root = generate_synthetic(tmp_path / "city", train=1, val=1, size=(32, 64), quiet=True, panoptic=False)
    stale = root / "gtFine" / ".cityscapes_panoptic.k1ll3d.tmp"  # what a SIGKILL between writes leaves
    (stale / "cityscapes_panoptic_val").mkdir(parents=True)
    (stale / "cityscapes_panoptic_val.json").write_text('{"images": [')
    assert write_cityscapes_panoptic(root, ["val", "test"]) == ["val"]  # no test split: left out
    assert sorted(p.name for p in (root / "gtFine").iterdir()) == [
        "cityscapes_panoptic_val",
        "cityscapes_panoptic_val.json",
        "train",
        "val",
    ]


def test_redrawn_city_replaces_or_drops_its_panoptic_files(tmp_path: Path) -> None:
    city, fresh = tmp_path / "city", tmp_path / "fresh"
    generate_synthetic(city, train=4, val=2, size=(64, 128), seed=1, quiet=True)
    generate_synthetic(city, train=4, val=2, size=(64, 128), seed=2, quiet=True, force=True)
    generate_synthetic(fresh, train=4, val=2, size=(64, 128), seed=2, quiet=True)
    assert _panoptic_digest(city) == _panoptic_digest(fresh) and len(_panoptic_digest(city)) == 2 + 4 + 2
    generate_synthetic(city, train=4, val=2, size=(64, 128), seed=2, quiet=True, force=True, panoptic=False)
    assert _panoptic_digest(city) == {}
    assert json.loads((city / MARKER).read_text())["panoptic"] is False


def test_prepare_cityscapes_ignores_them(synthetic_source: Path, synthetic_prepared: Path, tmp_path: Path) -> None:
    """The fixture city holds the panoptic files; `prepare cityscapes` prepares every image and nothing else,
    and gives the same dataset as from the tree without them."""
    for split, n in (("train", 6), ("val", 3)):
        images = json.loads((synthetic_prepared / split / "instances.json").read_text())["images"]
        assert len(images) == n and all(im["file_name"].endswith("_leftImg8bit.png") for im in images)
    from mtlcli.data.cityscapes import prepare_cityscapes

    bare = tmp_path / "bare"
    shutil.copytree(synthetic_source, bare, ignore=shutil.ignore_patterns("cityscapes_panoptic_*"))
    summary = prepare_cityscapes(bare, tmp_path / "data", workers=1, quiet=True, splits=["val"])
    assert summary["skipped"] == []
    a = sorted(p.relative_to(synthetic_prepared / "val") for p in (synthetic_prepared / "val").rglob("*.png"))
    b = sorted(p.relative_to(tmp_path / "data" / "val") for p in (tmp_path / "data" / "val").rglob("*.png"))
    assert a == b and a
    for rel in a:
        assert (synthetic_prepared / "val" / rel).read_bytes() == (tmp_path / "data" / "val" / rel).read_bytes()


def test_quickstart_still_reuses_a_city_by_its_parameters(synthetic_source: Path, tmp_path: Path) -> None:
    from mtlcli.cli.quickstart import _made_with, _synthetic_params

    assert _made_with(synthetic_source, _synthetic_params(6, 3, (64, 128), 0))
    assert not _made_with(synthetic_source, _synthetic_params(6, 3, (64, 128), 1))
    old = tmp_path / "old"  # a city drawn before the panoptic files: its marker has no "panoptic"
    shutil.copytree(synthetic_source, old, ignore=shutil.ignore_patterns("cityscapes_panoptic_*"))
    marker = json.loads((old / MARKER).read_text())
    del marker["panoptic"]
    (old / MARKER).write_text(json.dumps(marker))
    assert _made_with(old, _synthetic_params(6, 3, (64, 128), 0))


def test_cli_writes_them_unless_no_panoptic(tmp_path: Path) -> None:
    from mtlcli.cli.main import main

    def run(argv: list[str]) -> int:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        return exc.value.code or 0

    city = tmp_path / "city"
    argv = ["prepare", "synthetic", "--out", str(city), "--train", "1", "--val", "1", "--size", "32", "64", "-j", "1"]
    assert run([*argv, "-q"]) == 0
    assert len(_panoptic_digest(city)) == 2 + 1 + 1
    assert run([*argv, "-q", "--force", "--no-panoptic"]) == 0
    assert _panoptic_digest(city) == {} and json.loads((city / MARKER).read_text())["panoptic"] is False
