"""`prepare_mot15` on tiny MOT15 sequences: split by time, skipped frames, exact boxes, DT bins."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from mtlcli.data.mot15 import prepare_mot15
from mtlcli.data.prepared import DatasetMeta, read_label_png
from mtlcli.errors import UserError

H, W = 32, 48


def make_sequence(root: Path, name: str, n_frames: int, rows: list[str], seqinfo: bool = False) -> Path:
    seq = root / "train" / name
    (seq / "img1").mkdir(parents=True)
    (seq / "gt").mkdir()
    rng = np.random.default_rng(n_frames)
    for f in range(1, n_frames + 1):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(seq / "img1" / f"{f:06d}.jpg")
    (seq / "gt" / "gt.txt").write_text("\n".join(rows) + "\n")
    if seqinfo:
        (seq / "seqinfo.ini").write_text(
            f"[Sequence]\nname={name}\nimDir=img1\nframeRate=30\nseqLength={n_frames}\n"
            f"imWidth={W}\nimHeight={H}\nimExt=.jpg\n"
        )
    return seq


@pytest.fixture
def mot(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "2DMOT2015"
    # SEQ-A: 10 frames; frame 4 has no row, frame 9 only a conf == 0 row; frame 1 has two boxes
    rows_a = ["1,1,3,4,10,12,1,-1,-1,-1", "1,2,20,8,8,16,1,-1,-1,-1", "9,1,3,4,10,12,0,-1,-1,-1"]
    rows_a += [f"{f},1,{f},2,6,10,1,-1,-1,-1" for f in (2, 3, 5, 6, 7, 8, 10)]
    rows_a += ["2,3,-5,-5,8,8,1,-1,-1,-1", "3,4,100,100,5,5,1,-1,-1,-1"]  # clipped; entirely outside
    make_sequence(src, "SEQ-A", 10, rows_a)
    make_sequence(src, "SEQ-B", 5, [f"{f},7,1,1,4,4,1,-1,-1,-1" for f in range(1, 6)], seqinfo=True)
    return {"src": src, "out": tmp_path / "out"}


def images(out: Path, split: str) -> dict[str, dict]:
    coco = json.loads((out / split / "instances.json").read_text())
    return {
        im["stem"]: {**im, "anns": [a for a in coco["annotations"] if a["image_id"] == im["id"]]}
        for im in coco["images"]
    }


def test_split_by_time_boxes_and_skipped_frames(mot):
    src, out = mot["src"], mot["out"]
    summary = prepare_mot15(src, out, workers=1)
    meta = DatasetMeta.load(out)
    assert meta.splits == ["train", "val"] and meta.det_classes == ["pedestrian"]
    assert meta.seg_classes == [] and meta.palette == [] and Path(meta.source) == src.resolve()

    train, val = images(out, "train"), images(out, "val")
    # last 20% of each sequence's frames: SEQ-A 8..., 9 and 10 (9 has no gt); SEQ-B frame 5
    assert sorted(train) == [f"SEQ-A_{f:06d}" for f in (1, 2, 3, 5, 6, 7, 8)] + [f"SEQ-B_{f:06d}" for f in (1, 2, 3, 4)]
    assert sorted(val) == ["SEQ-A_000010", "SEQ-B_000005"]
    skipped = {s["file"]: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {"train/SEQ-A/img1/000004.jpg", "train/SEQ-A/img1/000009.jpg"}
    assert all(r.startswith("no ground truth") for r in skipped.values())
    assert summary["splits"]["train"]["skipped"] == 1 and summary["splits"]["val"]["skipped"] == 1

    first = train["SEQ-A_000001"]
    assert first["file_name"] == "train/SEQ-A/img1/000001.jpg" and (first["sequence"], first["frame_id"]) == (
        "SEQ-A",
        1,
    )
    # 1-based (x, y) = (3, 4), w x h = 10 x 12 -> COCO [2, 3, 10, 12]
    assert [a["bbox"] for a in first["anns"]] == [[2.0, 3.0, 10.0, 12.0], [19.0, 7.0, 8.0, 16.0]]
    assert all(a["category_id"] == 1 and a["iscrowd"] == 0 for a in first["anns"])
    assert [a["bbox"] for a in train["SEQ-A_000002"]["anns"]] == [
        [1.0, 1.0, 6.0, 10.0],
        [0.0, 0.0, 2.0, 2.0],
    ]  # clipped
    assert len(train["SEQ-A_000003"]["anns"]) == 1  # the box outside the image is dropped
    assert not (out / "train" / "semantic").exists()

    d = np.zeros((H, W))
    for x0, y0, x1, y1 in [(2, 3, 12, 15), (19, 7, 27, 23)]:
        m = np.zeros((H, W), bool)
        m[y0:y1, x0:x1] = True
        e = ndimage.distance_transform_edt(m)
        d = np.maximum(d, e / e.max())
    np.testing.assert_array_equal(
        read_label_png(out / "train" / "dt" / "SEQ-A_000001.png"), np.digitize(d, [0, 0.2, 0.4], right=True)
    )


def test_val_fraction_and_strict(mot):
    src, out = mot["src"], mot["out"]
    prepare_mot15(src, out, val_fraction=0.5, workers=2)
    assert sorted(images(out, "val")) == [
        "SEQ-A_000006",
        "SEQ-A_000007",
        "SEQ-A_000008",
        "SEQ-A_000010",
        "SEQ-B_000003",
        "SEQ-B_000004",
        "SEQ-B_000005",
    ]  # 5 of 10 frames, 3 of 5 (2.5 rounds up)
    with pytest.raises(UserError, match="000004.jpg: no ground truth.*--strict"):
        prepare_mot15(src, out, workers=1, strict=True, force=True)


def test_corrupt_frame_is_skipped(mot):
    (mot["src"] / "train" / "SEQ-B" / "img1" / "000002.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    summary = prepare_mot15(mot["src"], mot["out"], workers=1)
    reasons = {s["file"]: s["reason"] for s in summary["skipped"]}
    assert reasons["train/SEQ-B/img1/000002.jpg"].startswith("corrupt image")
    assert "SEQ-B_000002" not in images(mot["out"], "train")


@pytest.mark.parametrize(
    "case", ["missing", "misnamed", "no_img1", "no_gt", "bad_row", "bad_fraction", "out_not_empty"]
)
def test_bad_input_is_one_user_error(mot, case):
    src, out, kw = mot["src"], mot["out"], {}
    seq = src / "train" / "SEQ-A"
    if case == "missing":
        src = src / "nope"
        match = "no such folder"
    elif case == "misnamed":
        (src / "train").rename(src / "training")
        match = "no train/ folder"
    elif case == "no_img1":
        (seq / "img1").rename(seq / "images")
        match = "img1 is missing"
    elif case == "no_gt":
        (seq / "gt" / "gt.txt").unlink()
        match = "gt.txt is missing"
    elif case == "bad_row":
        with open(seq / "gt" / "gt.txt", "a") as f:
            f.write("11;1;2;3\n")
        match = "gt.txt line 13"
    elif case == "bad_fraction":
        kw["val_fraction"] = 1.5
        match = "outside"
    else:
        out.mkdir()
        (out / "mine.txt").write_text("keep")
        match = "not empty"
    with pytest.raises(UserError, match=match):
        prepare_mot15(src, out, workers=1, **kw)
    if case != "out_not_empty":
        assert not out.exists()


def test_cli_prepare_mot15(mot, capsys):
    pytest.importorskip("mtlcli.cli.prepare")
    from mtlcli.cli.main import main

    (mot["src"] / "train" / "SEQ-A" / "gt" / "gt.txt").unlink()
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "mot15", str(mot["src"]), "--out", str(mot["out"])])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "gt.txt is missing" in err and "\n" not in err
