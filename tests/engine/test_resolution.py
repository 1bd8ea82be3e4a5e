"""[eval] resolution: scoring at the paper's resolution (Ladder-DenseNet: 1024x448)."""

from __future__ import annotations

import pytest
import torch

from mtlcli.data.dataset import PreparedDataset
from mtlcli.engine.resolution import eval_transforms
from mtlcli.errors import UserError
from mtlcli.recipes import load_recipe


def test_ladder_recipe_scores_at_1024x448():
    assert load_recipe("ladderdensenet-cityscapes")["eval"]["resolution"] == [448, 1024]
    assert eval_transforms(load_recipe("ladderdensenet-tiny-synthetic")) is None  # source frame by default


def test_eval_split_is_resized_labels_nearest(synthetic_prepared):
    recipe = {"eval": {"resolution": [64, 96]}}
    plain = PreparedDataset(synthetic_prepared, "val")
    small = PreparedDataset(synthetic_prepared, "val", transforms=eval_transforms(recipe))
    (img, t), (_, t0) = small[0], plain[0]
    assert tuple(img.shape[-2:]) == (64, 96) and tuple(t["semantic"].shape) == (64, 96)
    assert set(t["semantic"].unique().tolist()) <= set(t0["semantic"].unique().tolist())  # no blended labels
    h0, w0 = t0["semantic"].shape
    torch.testing.assert_close(
        t["boxes"].as_subclass(torch.Tensor),
        t0["boxes"].as_subclass(torch.Tensor) * torch.tensor([96 / w0, 64 / h0] * 2),
    )
    assert tuple(t["orig_size"]) == tuple(t0["orig_size"])  # detections still go back to the source frame


def test_bad_resolution_is_a_user_error():
    with pytest.raises(UserError, match="eval.resolution"):
        load_recipe("ladderdensenet-cityscapes", ["eval.resolution=[448]"])


def test_evaluate_scores_at_the_resolution(synthetic_prepared):
    """The tiny Ladder model evaluated on the resized split: predictions and labels meet at H x W."""
    from mtlcli.engine.evaluate import evaluate
    from mtlcli.models import build_from_recipe

    recipe = load_recipe(
        "ladderdensenet-tiny-synthetic", [f"data.root={synthetic_prepared}", "eval.resolution=[64,96]"]
    )
    ds = PreparedDataset(synthetic_prepared, "val", transforms=eval_transforms(recipe))
    torch.manual_seed(0)
    model = build_from_recipe({**recipe["model"], "num_seg_classes": len(ds.seg_classes)})
    result = evaluate(model, ds, ["miou"], batch_size=2, progress=False)
    labelled = sum(int((ds[i][1]["semantic"] != 255).sum()) for i in range(len(ds)))
    assert result["details"]["miou"]["pixels"] == labelled  # every labelled pixel of the 64 x 96 maps, no more
    assert labelled <= len(ds) * 64 * 96
