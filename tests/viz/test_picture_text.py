"""Every picture names what it shows (issue 18): panel titles, the numbers, a legend of the classes drawn, and
type that reads without zooming. Checked on the drawing calls and on the rendered pixels."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlcli.viz.draw import (
    MIN_HEIGHT,
    class_colors,
    enlarge_factor,
    font_size_for,
    legend,
    legend_entries,
    titled_geometry,
)


def test_neighbouring_classes_get_distinct_hues():
    """person/rider and car/truck are neighbours in the Cityscapes list: their box and curve colours differ clearly,
    and none of the eight is the crowd regions' grey."""
    nine = np.array(class_colors(9), dtype=float)
    assert min(np.linalg.norm(a - b) for a, b in combinations(nine, 2)) > 60
    assert len(set(class_colors(20))) == 20 and class_colors(25)[20] == class_colors(25)[0]  # cycled past 20
    # grey marks crowd regions: no class takes a grey before the 19th
    assert all(max(c) - min(c) > 30 for c in class_colors(18))


def _attack_result(h: int = 64, w: int = 128) -> dict:
    before = torch.zeros(h, w, dtype=torch.long)
    before[h // 2 :] = 1
    after = before.clone()
    after[:, : w // 4] = 2
    image = torch.rand(3, h, w)
    r = 0.01 * torch.randn(3, h, w)
    return {
        "perturbation": r,
        "adversarial": (image + r).clamp(0, 1),
        "before": before,
        "after": after,
        "norm": "l2",
        "l2": 1.234,
        "linf": 0.0312,
        "flipped": True,
        "flip_rate": 0.97,
        "goal": 0.95,
        "chosen": h * w,
        "steps": 7,
        "target_class": 2,
        "source_class": None,
        "image": image,
    }


def test_adversarial_picture_titles_numbers_and_legend():
    from mtlcli.viz.adversarial import panel_titles, render_attack

    result = _attack_result()
    names, palette = ["road", "sidewalk", "building"], [(128, 64, 128), (244, 35, 232), (70, 70, 70)]
    titles, caption = panel_titles(result, names)
    assert titles == [
        "original",
        "perturbation x16",
        "adversarial image",
        "prediction before",
        "prediction after (target building)",
    ]
    assert caption.startswith("min L2: ‖r‖₂ = 1.234, ‖r‖∞ = 0.0312 (8.0/255); flipped 97.0%") and "7 steps" in caption
    picture = render_attack(result["image"], result, palette, names).permute(1, 2, 0).numpy()
    f, band = titled_geometry(64, MIN_HEIGHT)
    assert picture.shape[1] == 3 * f * 128 + 8  # three panels wide, not five: readable at a screen's width
    assert f * 64 >= MIN_HEIGHT and font_size_for(f * 64) >= 18
    entries = legend_entries([result["before"], result["after"]], [], names, [], palette)
    assert [e[0] for e in entries] == names  # every class either prediction shows, once
    drawn = (
        legend(entries, picture.shape[1], font_size_for(64 * enlarge_factor(64, MIN_HEIGHT))).permute(1, 2, 0).numpy()
    )
    assert np.array_equal(picture[-drawn.shape[0] :], drawn)  # the legend is the picture's last band
    no_names = render_attack(result["image"], result, palette, None)  # without class names: "class k"
    assert no_names.shape == render_attack(result["image"], result, palette, names).shape


def test_confusion_matrices_read_without_zooming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from matplotlib.figure import Figure

    from mtlcli.data.dataset import _quiet_coco
    from mtlcli.viz.confusion import confusion_figure
    from mtlcli.viz.detection import plot_detection

    classes = [f"class {k}" for k in range(19)]  # Cityscapes' 19
    matrix = np.diag(np.arange(1, 20)) + 1
    fig = confusion_figure(matrix, classes, [0.5] * 19, title="val: mIoU 50.0%")
    ax = fig.axes[0]
    assert ax.get_title() == "val: mIoU 50.0%" and ax.get_xlabel() == "predicted class"
    assert ax.get_ylabel() == "ground-truth class (IoU %)" and ax.get_yticklabels()[0].get_text() == "class 0 (50.0)"
    assert len(ax.texts) == 19 * 19 and min(t.get_fontsize() for t in ax.texts) >= 9
    assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 10
    width, height = fig.get_size_inches()
    assert width > height  # room for the colour bar beside a square matrix, no blank band above it

    figures = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (figures.append(self), save(self, *a, **k))[1])
    gt = _quiet_coco(
        {
            "images": [{"id": 1, "width": 100, "height": 100}],
            "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "rider"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 40], "iscrowd": 0, "area": 800}
            ],
        }
    )
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 40], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [60, 60, 10, 10], "score": 0.8},
    ]
    plot_detection(gt, dets, ["person", "rider"], tmp_path, "val", use_07=True)
    pr, f1, cm = (f.axes[0] for f in figures)
    assert pr.get_legend().get_title().get_text() == "AP, VOC2007 11-point"  # as `mtl eval --metric voc07` prints
    assert [t.get_text() for t in pr.get_legend().get_texts()] == ["person 1.000", "all classes, mAP 1.000"]
    assert cm.texts and min(t.get_fontsize() for t in cm.texts) >= 9
    assert min(t.get_fontsize() for t in cm.get_yticklabels()) >= 10 and "cells: counts" in cm.get_title()
    lines = {ln.get_label(): tuple(ln.get_color()) for ln in f1.get_lines() if not ln.get_label().startswith("_")}
    assert list(lines)[0] == "person" and lines["person"] == tuple(c / 255 for c in class_colors(2)[0])


def test_prediction_overlays_are_titled_with_a_legend(
    det_run: Path, synthetic_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import mtlcli.viz.predictions as predictions
    from mtlcli.data.dataset import PreparedDataset
    from mtlcli.engine.loaded import load_run

    calls = []
    draw = predictions.titled_picture
    monkeypatch.setattr(
        predictions,
        "titled_picture",
        lambda panels, titles, entries, caption=None: (
            calls.append((titles, entries)),
            draw(panels, titles, entries, caption),
        )[1],
    )
    loaded = load_run(det_run)
    ds = PreparedDataset(synthetic_prepared, "val")
    predictions.render_predictions(
        loaded.model, ds, tmp_path, num=1, score_threshold=0.0, seg_classes=loaded.classes.seg_classes, progress=False
    )
    # names left to the dataset, as `mtl quickstart` draws (its legend read "class 0, class 1, ..." once)
    predictions.render_predictions(loaded.model, ds, tmp_path / "defaults", num=1, score_threshold=0.0, progress=False)
    (titles, entries), (_, default_entries) = calls
    assert default_entries == entries
    assert titles == ["ground truth", "prediction (score ≥ 0)"]
    names = [e[0] for e in entries]
    assert names and all(not n.startswith("class ") for n in names)  # real class names
    assert any(n.endswith("(box)") for n in names) and any(filled for _, _, filled in entries)
