"""`result.panoptic` in the Python API: the merge of docs/panoptic.md on a box-only family (IvaNet),
segments that tile the id map, Cityscapes labelIds as category ids, things marked inferred."""

from __future__ import annotations

import numpy as np

from tests.use.conftest import write_image


def test_result_panoptic_tiles_the_image(ivanet_model, tmp_path):
    result = ivanet_model.predict(write_image(tmp_path / "a.png", (64, 128)), score_threshold=0.0)
    assert result.panoptic is not None
    ids, segments = result.panoptic
    assert ids.shape == (64, 128) and ids.dtype == np.int32
    assert sorted(s["id"] for s in segments) == sorted(set(np.unique(ids).tolist()) - {0})
    for s in segments:
        assert s["area"] == int((ids == s["id"]).sum())
        assert s["category_id"] in range(7, 34)  # Cityscapes labelIds (road 7 ... bicycle 33)
        if s["isthing"]:
            assert s["inferred"] is True  # IvaNet has no masks: the box's class in the semantic map
