"""PQ equals cityscapesscripts' evalPanopticSemanticLabeling (the COCO panopticapi algorithm) on the same
files, to 1e-9, on fixtures in the real format; the rules it applies, one case each; bad files."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtlcli.errors import UserError
from mtlcli.metrics.panoptic import PanopticMetric, id2rgb, pq_compute, read_panoptic_png, rgb2id
from tests.metrics.panoptic_fixtures import CATEGORIES, write_pairs

official = pytest.importorskip("cityscapesscripts.evaluation.evalPanopticSemanticLabeling")


def official_pq(gt_json: Path, gt_folder: Path, pred_json: Path, pred_folder: Path) -> dict:
    """The official per-image loop and averaging, in this process (its multi-core wrapper forks a pool)."""
    gt, pred = json.loads(gt_json.read_text()), json.loads(pred_json.read_text())
    cats = {c["id"]: c for c in gt["categories"]}
    by_id = {a["image_id"]: a for a in pred["annotations"]}
    pairs = [(a, by_id[a["image_id"]]) for a in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        stat = official.pq_compute_single_core(0, pairs, str(gt_folder), str(pred_folder), cats)
    return official.average_pq(stat, cats)


def assert_same(ours: dict, theirs: dict) -> None:
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["n"] == theirs[group]["n"]
        for m in ("pq", "sq", "rq"):
            assert abs(ours[group][m] - theirs[group][m]) <= 1e-9, (group, m)
    assert set(ours["per_class"]) == set(theirs["per_class"])
    for cat, row in theirs["per_class"].items():
        for m in ("pq", "sq", "rq"):
            assert abs(ours["per_class"][cat][m] - row[m]) <= 1e-9, (cat, m)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pq_equals_the_official_script_on_random_scenes(tmp_path, seed):
    paths = write_pairs(tmp_path, 12, size=(48, 96), seed=seed)
    ours = pq_compute(*paths, workers=2 if seed else 1)
    assert_same(ours, official_pq(*paths))
    assert 0 < ours["All"]["pq"] < 1 and ours["Things"]["n"] == 3 and ours["Stuff"]["n"] == 5


def test_pq_equals_the_official_entry_point(tmp_path):
    """evaluatePanoptic itself (multi-core, writes its results file) on the same files."""
    paths = write_pairs(tmp_path, 6, size=(40, 80), seed=7)
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = official.evaluatePanoptic(*(str(p) for p in paths), str(tmp_path / "official.json"))
    assert_same(pq_compute(*paths), theirs)


def _write(root: Path, gt_ids, gt_segs, pred_ids, pred_segs, categories=CATEGORIES):
    for d in ("gt", "pred"):
        (root / d).mkdir(parents=True, exist_ok=True)
    Image.fromarray(id2rgb(np.asarray(gt_ids))).save(root / "gt" / "a.png")
    Image.fromarray(id2rgb(np.asarray(pred_ids))).save(root / "pred" / "a.png")
    (root / "gt.json").write_text(
        json.dumps(
            {
                "annotations": [{"image_id": "a", "file_name": "a.png", "segments_info": gt_segs}],
                "categories": categories,
            }
        )
    )
    (root / "pred.json").write_text(
        json.dumps({"annotations": [{"image_id": "a", "file_name": "a.png", "segments_info": pred_segs}]})
    )
    return root / "gt.json", root / "gt", root / "pred.json", root / "pred"


def _seg(i, cat, area, crowd=0):
    return {"id": i, "category_id": cat, "iscrowd": crowd, "area": area}


def test_the_official_rules_one_by_one(tmp_path):
    """A 10x10 image: a car over void (its void part leaves the union), a person exactly at IoU 0.5 (no
    match), a false car mostly on the car crowd region (ignored), gt ids no segment names (skipped)."""
    gt = np.full((10, 10), 7, np.uint32)  # road
    gt[0:4, 0:4] = 26001  # car, 16 px
    gt[0:4, 4:6] = 0  # void next to it
    gt[5:9, 0:4] = 24001  # person, 16 px
    gt[5:9, 6:10] = 26  # car crowd, 16 px
    gt[9, 9] = 99  # an id no segment names
    pred = np.full((10, 10), 5, np.uint32)
    pred[0:4, 0:6] = 1  # car: 16 on the car + 8 on void -> IoU 16 / (24 + 16 - 16 - 8) = 1
    pred[5:9, 0:2] = 2  # person: 8 of 16 -> IoU 8 / 16 = 0.5, not > 0.5
    pred[5:9, 5:10] = 3  # car: 16 of its 20 px on the crowd -> ignored
    gt_segs = [_seg(7, 7, int((gt == 7).sum())), _seg(26001, 26, 16), _seg(24001, 24, 16), _seg(26, 26, 16, 1)]
    pred_segs = [
        {"id": 1, "category_id": 26},
        {"id": 2, "category_id": 24},
        {"id": 3, "category_id": 26},
        {"id": 5, "category_id": 7},
    ]
    paths = _write(tmp_path, gt, gt_segs, pred, pred_segs)
    ours = pq_compute(*paths)
    assert_same(ours, official_pq(*paths))
    assert ours["per_class"][26] == {"pq": 1.0, "sq": 1.0, "rq": 1.0}
    assert ours["per_class"][24]["pq"] == 0.0  # one FN and one FP


def test_the_metric_streams_arrays_like_the_files(tmp_path):
    paths = write_pairs(tmp_path, 4, size=(32, 64), seed=3)
    gt, pred = json.loads(paths[0].read_text()), json.loads(paths[2].read_text())
    metric = PanopticMetric(gt["categories"])
    for a, p in zip(gt["annotations"], pred["annotations"], strict=True):
        metric.update(
            read_panoptic_png(paths[1] / a["file_name"]),
            a["segments_info"],
            read_panoptic_png(paths[3] / p["file_name"]),
            p["segments_info"],
        )
    res = metric.compute()
    assert res["value"] == pytest.approx(official_pq(*paths)["All"]["pq"], abs=1e-12)
    assert [c["name"] for c in res["details"]["classes"]] == [c["name"] for c in CATEGORIES]
    assert res["details"]["things"]["n"] == 3


def test_rgb_encoding_round_trips():
    ids = np.array([[0, 1, 256, 65536, 256**3 - 1]], np.uint32)
    assert (rgb2id(id2rgb(ids)) == ids).all()


def test_bad_predictions_are_one_clear_error(tmp_path):
    gt = np.full((4, 4), 7, np.uint32)
    segs = [_seg(7, 7, 16)]
    pred = np.full((4, 4), 3, np.uint32)
    with pytest.raises(UserError, match="segment id 3 is in the predicted PNG and not in its segments_info"):
        pq_compute(*_write(tmp_path / "a", gt, segs, pred, [{"id": 4, "category_id": 7}]))
    with pytest.raises(UserError, match=r"segment ids \[4\] are in the prediction's segments_info"):
        pq_compute(*_write(tmp_path / "b", gt, segs, pred, [{"id": 3, "category_id": 7}, {"id": 4, "category_id": 7}]))
    with pytest.raises(UserError, match="category_id 5"):
        pq_compute(*_write(tmp_path / "c", gt, segs, pred, [{"id": 3, "category_id": 5}]))
    paths = _write(tmp_path / "d", gt, segs, pred[:2], [{"id": 3, "category_id": 7}])
    with pytest.raises(UserError, match="original image size"):
        pq_compute(*paths)
    paths[2].write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        pq_compute(*paths)


def _png_variants(root: Path, ids: np.ndarray) -> dict[str, tuple[Path, np.ndarray]]:
    """`ids` written as the PNG layouts read_panoptic_png accepts: {name: (file, the RGB the file holds)}."""
    rng = np.random.default_rng(7)
    rgb = id2rgb(ids)
    out = {}
    Image.fromarray(rgb).save(root / "rgb.png")
    out["rgb"] = (root / "rgb.png", rgb)
    rgba = np.concatenate([rgb, rng.integers(0, 256, ids.shape + (1,), dtype=np.uint8)], -1)  # any alpha
    Image.fromarray(rgba).save(root / "rgba.png")
    out["rgba"] = (root / "rgba.png", rgb)
    Image.fromarray(rgb).save(root / "trns.png", transparency=tuple(int(v) for v in rgb.reshape(-1, 3)[0]))
    out["rgb with tRNS"] = (root / "trns.png", rgb)
    colours, index = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    if len(colours) <= 256:
        pal = Image.fromarray(index.reshape(ids.shape).astype(np.uint8), mode="L").convert("P")
        pal.putpalette(colours.astype(np.uint8).tobytes())
        pal.save(root / "palette.png")
        out["palette"] = (root / "palette.png", rgb)
    return out


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 3), (33, 65)])
def test_panoptic_pngs_read_as_the_official_rgb2id(tmp_path, shape):
    """Odd sizes (RGB rows of 3 bytes a pixel, the last pixel too), all 24 bits of an id, RGBA with any
    alpha, tRNS, palette: the ids are the official rgb2id of the RGB the file holds."""
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    ids = rng.integers(0, 1 << 24, shape, dtype=np.uint32)
    ids.flat[-1] = (1 << 24) - 1  # the last pixel (read by hand for RGB) with every bit set
    ids.flat[0] = 0
    if shape == (33, 65):  # few colours: a palette PNG too
        ids = rng.choice(np.array([0, 7, 26001, 0xFFFFFF, 0x10203], np.uint32), shape)
    for name, (path, rgb) in _png_variants(tmp_path, ids).items():
        got = read_panoptic_png(path)
        assert got.dtype == np.uint32 and got.shape == shape, name
        assert (got == official.rgb2id(rgb.astype(np.uint32))).all(), name
        assert (got == ids).all(), name


def test_panoptic_pngs_without_rgb_are_refused(tmp_path):
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(np.zeros((4, 6, 2), np.uint8), mode="LA").save(tmp_path / "la.png")
    for name in ("gray.png", "la.png"):
        with pytest.raises(UserError, match="not an RGB panoptic PNG"):
            read_panoptic_png(tmp_path / name)
    Image.fromarray(id2rgb(np.arange(24, dtype=np.uint32).reshape(4, 6))).save(tmp_path / "rgb.png")
    data = bytearray((tmp_path / "rgb.png").read_bytes())
    data[-20:-12] = bytes(8)  # damaged inside IDAT: PIL's error, not libpng's crash
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(UserError, match="not a readable PNG"):
        read_panoptic_png(tmp_path / "bad.png")


def test_id_maps_of_any_integer_layout_count_alike(tmp_path):
    """The metric's arrays: int64, uint16, read-only, transposed views count as the uint32 maps do; ids
    outside 0 .. 2^24 - 1 (in the maps or in segments_info) and non-integer maps are one clear error, and
    the metric stays correct after one."""
    paths = write_pairs(tmp_path, 2, size=(24, 40), seed=5)
    gt, pred = json.loads(paths[0].read_text()), json.loads(paths[2].read_text())
    pairs = [
        (read_panoptic_png(paths[1] / a["file_name"]), a["segments_info"], read_panoptic_png(paths[3] / p["file_name"]))
        for a, p in zip(gt["annotations"], pred["annotations"], strict=True)
    ]
    psegs = [p["segments_info"] for p in pred["annotations"]]
    reference = official_pq(*paths)

    def run(convert, convert_pred=None, metric=None):
        metric = metric or PanopticMetric(gt["categories"])
        for (g, gs, q), ps in zip(pairs, psegs, strict=True):
            metric.update(convert(g), gs, (convert_pred or convert)(q), ps)
        return metric

    def read_only(a):
        a = a.copy()
        a.flags.writeable = False
        return a

    conversions = [
        lambda a: a.astype(np.int64),
        read_only,
        lambda a: np.ascontiguousarray(a.T).T,  # Fortran order
        lambda a: np.pad(a, ((0, 0), (0, 3)))[:, :-3],  # a strided view
    ]
    for convert in conversions:
        assert_same(run(convert).stats.average(), reference)
    mixed = PanopticMetric(gt["categories"])  # a larger image first (void margins change nothing), then smaller
    for k, ((g, gs, q), ps) in enumerate(zip(pairs, psegs, strict=True)):
        pad = ((0, 7), (0, 5)) if k == 0 else ((0, 0), (0, 0))
        mixed.update(np.pad(g, pad), gs, np.pad(q, pad), ps)
    assert_same(mixed.stats.average(), reference)
    assert max(int(g.max()) for g, _, _ in pairs) < 1 << 16  # Cityscapes gt ids fit 16 bits; the predictions' not
    assert_same(run(lambda a: a.astype(np.uint16), lambda a: a).stats.average(), reference)

    metric = PanopticMetric(gt["categories"])
    (g, gs, q), ps = pairs[0], psegs[0]
    for dtype, value in ((np.uint32, 1 << 24), (np.int64, -5), (np.uint32, 1 << 31), (np.int64, 1 << 40)):
        bad = g.astype(dtype)
        bad[3, 4] = value
        for gt_map, pred_map in ((bad, q), (g, bad)):
            with pytest.raises(UserError, match=rf"segment ids are 0 \.\. 2\^24 - 1 .*; got {value}$"):
                metric.update(gt_map, gs, pred_map, ps)
    with pytest.raises(UserError, match="integer segment ids; got dtype float64"):
        metric.update(g.astype(np.float64), gs, q, ps)
    with pytest.raises(UserError, match="segments_info has segment id 16777216"):
        metric.update(g, gs, q, [*ps, {"id": 1 << 24, "category_id": 7}])
    assert_same(run(lambda a: a, metric=metric).stats.average(), reference)
