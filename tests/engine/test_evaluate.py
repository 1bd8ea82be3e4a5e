"""`evaluate()`: a fake model with fixed DESIGN.md §4 outputs over the synthetic prepared split."""

from __future__ import annotations

import copy
import glob
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlcli.data.dataset import PreparedDataset
from mtlcli.engine.evaluate import evaluate
from mtlcli.errors import UserError
from mtlcli.metrics.predictions import evaluate_predictions

ALL = ["miou", "voc07", "voc12", "coco-bbox", "coco-segm", "ar"]


def _key(image: torch.Tensor) -> bytes:
    return image.cpu().numpy().tobytes()


class FixedModel(nn.Module):
    """Answers each image of a split with its precomputed outputs (looked up by the pixels)."""

    def __init__(self, outputs: dict[bytes, dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.outputs = outputs
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, images, targets=None):
        assert not self.training, "evaluate() must put the model in eval mode"
        return [self.outputs[_key(img)] for img in images]


def _outputs(
    ds: PreparedDataset, noisy: bool, keys=("sem_seg", "boxes", "masks")
) -> dict[bytes, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    C = len(ds.seg_classes)
    outs = {}
    for i in range(len(ds)):
        image, t = ds[i]
        sem = t["semantic"].clone()
        sem[sem == 255] = 0
        keep = t["iscrowd"] == 0
        boxes, labels, masks = t["boxes"][keep].as_subclass(torch.Tensor).clone(), t["labels"][keep], t["masks"][keep]
        scores = torch.linspace(0.9, 0.5, len(boxes))
        if noisy:
            h, w = sem.shape
            sem[: h // 3, : w // 2] = (i + 3) % C  # a wrong block
            sem[h // 2 :, w // 2 :] = torch.randint(0, C, (h - h // 2, w - w // 2), generator=g)  # noise
            shift = torch.randint(-3, 4, (len(boxes), 2), generator=g).float()
            boxes = boxes + shift.repeat(1, 2)  # moved, not deformed
            masks = masks.roll(2, dims=-1)
            scores = torch.rand(len(boxes), generator=g)
            if len(boxes) > 2:  # one missed object
                boxes, labels, masks, scores = boxes[1:], labels[1:], masks[1:], scores[1:]
        out = {}
        if "sem_seg" in keys:
            out["sem_seg"] = F.one_hot(sem, C).permute(2, 0, 1).float()
        if "boxes" in keys:
            out.update(boxes=boxes, labels=labels, scores=scores)
        if "masks" in keys:
            out["masks"] = masks[:, None].float()
        outs[_key(image)] = out
    return outs


def test_perfect_predictions_score_one(synthetic_prepared):
    ds = PreparedDataset(synthetic_prepared, "val")
    model = FixedModel(_outputs(ds, noisy=False))
    model.train()
    res = evaluate(model, ds, ALL, batch_size=2, progress=False)
    assert model.training  # the caller's mode comes back
    for name in ALL:
        assert res["metrics"][name] == pytest.approx(1.0), name
    assert res["details"]["miou"]["miiou"] == pytest.approx(1.0)


def test_saved_predictions_agree_with_evaluate_and_the_official_script(
    synthetic_prepared, synthetic_source, tmp_path, monkeypatch
):
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as ev

    ds = PreparedDataset(synthetic_prepared, "val")
    save = tmp_path / "preds"
    res = evaluate(FixedModel(_outputs(ds, noisy=True)), ds, ALL, batch_size=2, progress=False, save_predictions=save)
    assert 0.05 < res["metrics"]["miou"] < 0.95 and 0.05 < res["metrics"]["coco-bbox"] < 0.95

    # the files written are read back to the same numbers
    again = evaluate_predictions(synthetic_prepared, "val", save, ALL, progress=False)
    for name in ALL:
        assert again["metrics"][name] == pytest.approx(res["metrics"][name], abs=1e-12), name

    # labelIds/ is what the official Cityscapes script takes: same mIoU and iIoU on the source gtFine
    monkeypatch.setattr(
        np, "in1d", lambda a, b, invert=False: np.isin(np.asarray(a).ravel(), b, invert=invert), raising=False
    )
    args = copy.copy(ev.args)
    args.evalInstLevelScore, args.JSONOutput, args.quiet = True, False, True
    args.predictionPath, args.predictionWalk = str(save / "labelIds"), None
    gts = sorted(glob.glob(str(synthetic_source / "gtFine" / "val" / "*" / "*_gtFine_labelIds.png")))
    official = ev.evaluateImgLists([ev.getPrediction(args, gt) for gt in gts], gts, args)
    assert res["metrics"]["miou"] == pytest.approx(official["averageScoreClasses"], abs=1e-9)
    assert res["details"]["miou"]["miiou"] == pytest.approx(official["averageScoreInstClasses"], abs=1e-9)
    for name, iou in zip(ds.seg_classes, res["details"]["miou"]["iou"], strict=True):
        ref = official["classScores"][name]
        assert (iou is None) if math.isnan(ref) else iou == pytest.approx(ref, abs=1e-9), name


def test_dt_metric_scores_the_distance_transform_bins(synthetic_prepared):
    """`dt` (DATNet's auxiliary head): pixel accuracy of the DT bins against the prepared dt/ maps, and
    each bin's IoU, equal to a direct count over the split; perfect bins score 1."""
    ds = PreparedDataset(synthetic_prepared, "val")
    perfect, shifted, direct = {}, {}, np.zeros((4, 4), dtype=np.int64)
    for i in range(len(ds)):
        image, t = ds[i]
        dt = t["dt"].as_subclass(torch.Tensor).long()
        assert int(dt.max()) > 0
        moved = dt.roll(3, dims=-1)
        perfect[_key(image)] = {"dt": F.one_hot(dt, 4).permute(2, 0, 1).float()}
        shifted[_key(image)] = {"dt": F.one_hot(moved, 4).permute(2, 0, 1).float()}
        np.add.at(direct, (dt.numpy().ravel(), moved.numpy().ravel()), 1)
    assert evaluate(FixedModel(perfect), ds, ["dt"], progress=False)["metrics"]["dt"] == pytest.approx(1.0)
    res = evaluate(FixedModel(shifted), ds, ["dt"], batch_size=2, progress=False)
    tp = np.diag(direct)
    assert res["metrics"]["dt"] == pytest.approx(tp.sum() / direct.sum(), abs=1e-12) and res["metrics"]["dt"] < 0.99
    iou = tp / (direct.sum(0) + direct.sum(1) - tp)
    assert res["details"]["dt"]["iou"] == pytest.approx(iou.tolist(), abs=1e-12)
    assert res["details"]["dt"]["classes"] == ["background", "DT <= 0.2", "DT 0.2-0.4", "DT > 0.4"]
    with pytest.raises(UserError, match="'dt'"):
        evaluate(FixedModel(_outputs(ds, False)), ds, ["dt"], progress=False)


def test_missing_output_and_occupied_folder_are_user_errors(synthetic_prepared, tmp_path):
    ds = PreparedDataset(synthetic_prepared, "val")
    with pytest.raises(UserError, match="sem_seg"):
        evaluate(FixedModel(_outputs(ds, False, keys=("boxes",))), ds, ["miou"], progress=False)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "mine.txt").write_text("user data")
    with pytest.raises(UserError, match="--force"):
        evaluate(FixedModel(_outputs(ds, False)), ds, ["miou"], progress=False, save_predictions=occupied)
    assert (occupied / "mine.txt").read_text() == "user data"


def _ranked(rank: int, world: int, port: int, root: str, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ds = PreparedDataset(root, "val")
        res = evaluate(FixedModel(_outputs(ds, noisy=True)), ds, ALL, batch_size=1, progress=False)
        queue.put((rank, res["metrics"]))
    finally:
        dist.destroy_process_group()


def test_two_ranks_gather_to_the_single_process_numbers(synthetic_prepared):
    import socket

    import torch.multiprocessing as mp

    ds = PreparedDataset(synthetic_prepared, "val")
    single = evaluate(FixedModel(_outputs(ds, noisy=True)), ds, ALL, batch_size=2, progress=False)["metrics"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_ranked, args=(2, port, str(synthetic_prepared), queue), nprocs=2, start_method="spawn")
    results = dict(queue.get() for _ in range(2))
    for rank in (0, 1):  # each rank saw half the images and reports the numbers of all of them
        for name in ALL:
            assert results[rank][name] == pytest.approx(single[name], abs=1e-12), (rank, name)
