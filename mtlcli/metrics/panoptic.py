"""Panoptic quality (PQ, SQ, RQ) exactly as the COCO panopticapi / cityscapesscripts'
`evalPanopticSemanticLabeling` computes it, vectorised.

Files (COCO panoptic format): a JSON {"annotations": [{image_id, file_name, segments_info: [{id,
category_id, iscrowd?, area?}]}], "categories": [{id, name, isthing}]} and one RGB PNG per image whose
pixel value is the segment id through `rgb2id` (id = R + 256 G + 256² B; 0 = void).

The official rules, kept to the letter (docs/panoptic.md):
- a ground-truth segment and a predicted one of the same category match when IoU > 0.5, where
  union = |pred| + |gt| - |pred ∩ gt| - |pred ∩ void| (void = gt id 0); the gt area is the JSON's
  "area" (the official script never recounts it), the predicted area is counted in the PNG;
- crowd gt segments (iscrowd = 1) never match and are no false negatives; an unmatched predicted
  segment is no false positive when more than half of it lies on void plus the crowd segment of its
  category (the last crowd segment of that category in segments_info, as the official dict keeps it);
- gt pixel ids that no segment names are neither void nor a segment (the official script skips them);
- per class PQ = Σ IoU / (TP + FP/2 + FN/2), SQ = Σ IoU / TP, RQ = TP / (TP + FP/2 + FN/2); averages over
  the classes with TP + FP + FN > 0 (overall, things = isthing 1, stuff = the others).

Where the official script loops over segment pairs in Python, `PQStats.add_image` maps both id maps to
compact segment indices (one lookup table over the 2^24 ids) and counts every (gt, pred) pair in one
bincount of the combined index — the official `np.unique` of gt * 2^24 + pred, without the sort — then
matches with array operations (`_pair_counts`).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mtlcli.data.panoptic import read_panoptic_png
from mtlcli.errors import UserError
from mtlcli.ops.panoptic import id2rgb, rgb2id  # noqa: F401 (re-exported: the format's encoding)

T = TypeVar("T")

OFFSET = 256 * 256 * 256
VOID = 0
LANES = 4  # sub-histograms of _pair_counts


class PQStats:
    """Per-category sums over images: iou, tp, fp, fn, indexed like `categories`."""

    def __init__(self, categories: list[dict[str, Any]]) -> None:
        self.categories = categories
        self.index = {int(c["id"]): k for k, c in enumerate(categories)}
        k = len(categories) + 1  # the last slot takes gt segments of unlisted categories (never averaged)
        self.iou = np.zeros(k, np.float64)
        self.tp = np.zeros(k, np.int64)
        self.fp = np.zeros(k, np.int64)
        self.fn = np.zeros(k, np.int64)
        self._lut: np.ndarray | None = None  # id -> code, all zeros between images (_pair_counts)
        self._lanes: Any = None  # pixel k -> k % LANES, int32 (_pair_counts)

    def __iadd__(self, other: PQStats) -> PQStats:
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self

    def add_image(
        self,
        gt_ids: np.ndarray,
        gt_segments: list[dict[str, Any]],
        pred_ids: np.ndarray,
        pred_segments: list[dict[str, Any]],
        where: str = "",
    ) -> None:
        """Count one image: id maps [H, W] (uint32, 0 = void) and their segments_info lists."""
        if gt_ids.shape != pred_ids.shape:
            raise UserError(
                f"{where}: the predicted panoptic PNG is {pred_ids.shape[1]}x{pred_ids.shape[0]} (WxH), its ground "
                f"truth {gt_ids.shape[1]}x{gt_ids.shape[0]}; write predictions in the original image size"
            )
        gt_segms = {int(s["id"]): s for s in gt_segments}
        pred_segms = {int(s["id"]): s for s in pred_segments}
        unknown = len(self.categories)
        G, P = len(gt_segms), len(pred_segms)
        g_ids = np.fromiter(gt_segms, np.int64, G)
        p_ids = np.fromiter(pred_segms, np.int64, P)

        g_pos = {int(v): k for k, v in enumerate(g_ids)}
        g_void = g_pos.get(VOID, G)
        counts = self._pair_counts(gt_ids, g_ids, pred_ids, p_ids, where)
        pred_area = counts[:, :P].sum(0)
        if P and (pred_area == 0).any():
            missing = p_ids[pred_area == 0].tolist()
            raise UserError(
                f"{where}: segment ids {missing} are in the prediction's segments_info and not in its PNG; "
                f"list only segments the PNG holds"
            )
        try:
            pcat = np.array([self.index[int(s["category_id"])] for s in pred_segms.values()], np.int64)
        except KeyError as exc:
            raise UserError(
                f"{where}: a predicted segment has category_id {exc.args[0]}, which the ground truth's categories "
                f"do not list ({', '.join(str(c['id']) for c in self.categories[:6])}, ...)"
            ) from None
        gcat = np.array([self.index.get(int(s["category_id"]), unknown) for s in gt_segms.values()], np.int64)
        gcrowd = np.array([s.get("iscrowd", 0) == 1 for s in gt_segms.values()], bool)
        if G:
            gt_area = np.array(
                [s["area"] if "area" in s else counts[g_pos[k]].sum() for k, s in gt_segms.items()], np.int64
            )
        else:
            gt_area = np.zeros(0, np.int64)
        void_hits = counts[g_void, :P]

        inter = counts[:G, :P]
        cand = (inter > 0) & (gcat[:, None] == pcat[None, :]) & ~gcrowd[:, None]
        gi, pj = np.nonzero(cand)
        i = inter[gi, pj]
        iou = i / (pred_area[pj] + gt_area[gi] - i - void_hits[pj])
        hit = iou > 0.5
        gi, pj, iou = gi[hit], pj[hit], iou[hit]
        np.add.at(self.tp, gcat[gi], 1)
        np.add.at(self.iou, gcat[gi], iou)
        g_matched = np.zeros(G, bool)
        g_matched[gi] = True
        p_matched = np.zeros(P, bool)
        p_matched[pj] = True

        np.add.at(self.fn, gcat[~g_matched & ~gcrowd], 1)
        crowd_of: dict[int, int] = {}  # category slot -> gt bin of its (last) crowd segment
        for k in np.nonzero(gcrowd)[0].tolist():
            crowd_of[int(gcat[k])] = k
        ignored = void_hits.astype(np.int64)
        for j in np.nonzero(~p_matched)[0].tolist():
            crowd = crowd_of.get(int(pcat[j]))
            if crowd is not None:
                ignored[j] += counts[crowd, j]
        fp = ~p_matched & ~(ignored / np.maximum(pred_area, 1) > 0.5)
        np.add.at(self.fp, pcat[fp], 1)

    def _pair_counts(
        self, gt_ids: np.ndarray, g_ids: np.ndarray, pred_ids: np.ndarray, p_ids: np.ndarray, where: str
    ) -> np.ndarray:
        """Pixels of every (gt segment, predicted segment) pair: [G + 2, P + 2] int64, rows = gt segments
        in segments_info order, void (unless 0 names a segment), ids no segment names; columns = predicted
        segments, void, nothing else (a predicted id missing from segments_info is an error).

        The official script takes np.unique of gt * 2^24 + pred. Here a lookup table over all 2^24 ids maps
        each pixel to its gt row (pre-multiplied by the column count) and its prediction column, and one
        bincount of their sum counts the pairs: no sort. torch's index_select and bincount do it (int32
        indices taken as they are, where numpy's take and bincount first copy them to int64; both release
        the GIL); an id outside 0 .. 2^24 - 1 fails index_select's bounds check."""
        import torch

        G, P = len(g_ids), len(p_ids)
        if self._lut is None:
            self._lut = np.zeros(OFFSET, np.int32)  # calloc'd: only the pages of ids in use are touched
        lut = self._lut
        table = torch.from_numpy(lut)
        if LANES * (G + 2) * (P + 2) >= 2**31:  # the int32 codes
            raise UserError(f"{where}: {G} ground-truth and {P} predicted segments are too many pairs to count")
        g_index, p_index = _index_tensor(gt_ids, where), _index_tensor(pred_ids, where)
        for seg_ids, whose in ((g_ids, "ground truth's"), (p_ids, "prediction's")):
            if len(seg_ids) and not (0 <= seg_ids.min() and seg_ids.max() < OFFSET):
                bad = int(seg_ids.min()) if seg_ids.min() < 0 else int(seg_ids.max())
                raise UserError(f"{where}: the {whose} segments_info has segment id {bad}; ids are 0 .. 2^24 - 1")
        # codes: 0 = an id not listed (gt: skipped; pred: error), 1..n = segments, n + 1 = void
        # (ids are unique: they are the keys of the segments_info dicts; a segment named 0 takes the void)
        try:
            lut[VOID] = (G + 1) * (P + 2)
            lut[g_ids] = np.arange(1, G + 1) * (P + 2)
            rows = torch.index_select(table, 0, g_index)
            lut[g_ids] = 0
            lut[VOID] = P + 1
            lut[p_ids] = np.arange(1, P + 1)
            rows += torch.index_select(table, 0, p_index)
        except IndexError:
            for ids in (gt_ids, pred_ids):
                bad = int(ids.max()) if int(ids.max()) >= OFFSET else int(ids.min())
                if not 0 <= bad < OFFSET:
                    raise UserError(
                        f"{where}: segment ids are 0 .. 2^24 - 1 (R + 256 G + 65536 B); got {bad}"
                    ) from None
            raise
        finally:
            lut[VOID] = 0
            lut[g_ids] = 0
            lut[p_ids] = 0
        # four interleaved sub-histograms (pixel k counts in lane k % 4): runs of equal codes, the rule in
        # a segmentation, then add to four counters in turn instead of stalling on one
        K = (G + 2) * (P + 2)
        if self._lanes is None or self._lanes.numel() < rows.numel():  # kept for the largest image so far
            self._lanes = torch.arange(rows.numel(), dtype=torch.int32) % LANES
        rows.add_(self._lanes[: rows.numel()], alpha=K)
        raw = torch.bincount(rows, minlength=LANES * K).view(LANES, K).sum(0).numpy().reshape(G + 2, P + 2)
        if raw[:, 0].any():
            stray = np.setdiff1d(np.unique(pred_ids), np.append(p_ids, VOID))
            raise UserError(
                f"{where}: segment id {int(stray[0])} is in the predicted PNG and not in its segments_info; "
                f"list every segment of the PNG in the JSON"
            )
        return raw[np.r_[1 : G + 2, 0]][:, np.r_[1 : P + 2, 0]]

    def average(self) -> dict[str, Any]:
        """{"All" | "Things" | "Stuff": {pq, sq, rq, n}, "per_class": {category id: {pq, sq, rq}}} as the
        official `average_pq` returns (NaN where a group has no class with segments)."""
        out: dict[str, Any] = {}
        per_class: dict[int, dict[str, float]] = {}
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            pq = sq = rq = 0.0
            n = 0
            for k, cat in enumerate(self.categories):
                if isthing is not None and (cat.get("isthing") == 1) != isthing:
                    continue
                tp, fp, fn, iou = int(self.tp[k]), int(self.fp[k]), int(self.fn[k]), float(self.iou[k])
                if tp + fp + fn == 0:
                    per_class.setdefault(int(cat["id"]), {"pq": 0.0, "sq": 0.0, "rq": 0.0})
                    continue
                n += 1
                c = {"pq": iou / (tp + 0.5 * fp + 0.5 * fn), "sq": iou / tp if tp else 0.0}
                c["rq"] = tp / (tp + 0.5 * fp + 0.5 * fn)
                per_class[int(cat["id"])] = c
                pq, sq, rq = pq + c["pq"], sq + c["sq"], rq + c["rq"]
            nan = float("nan")
            out[name] = {"pq": pq / n if n else nan, "sq": sq / n if n else nan, "rq": rq / n if n else nan, "n": n}
        out["per_class"] = per_class
        return out


def _index_tensor(ids: np.ndarray, where: str):
    """An integer id map as a flat int32 / int64 torch tensor sharing its memory where it can (uint32 ids
    are viewed as int32: one >= 2^31 turns negative and still fails the bounds check)."""
    import torch

    a = np.asarray(ids)
    if a.dtype.kind not in "iub":
        raise UserError(f"{where}: a panoptic id map holds integer segment ids; got dtype {a.dtype}")
    if a.dtype.itemsize < 4 or a.dtype.kind == "b":
        a = a.astype(np.int32)
    elif a.dtype.kind == "u":
        a = a.view(np.int32 if a.dtype.itemsize == 4 else np.int64)
    if not (a.flags.c_contiguous and a.flags.writeable):
        a = np.array(a, order="C")  # flat in C order; torch.from_numpy warns on read-only arrays
    return torch.from_numpy(a).reshape(-1)


# ----------------------------------------------------------------------------------------- files
def load_panoptic_json(path: str | Path, what: str = "panoptic JSON") -> dict[str, Any]:
    """Read and check a COCO panoptic JSON (annotations with segments_info; categories for ground truth)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such {what} — write COCO panoptic JSON (annotations with segments_info)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}) — write COCO panoptic JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise UserError(f"{path} has no 'annotations' list — it is not COCO panoptic JSON")
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not all(f in ann for f in ("image_id", "file_name", "segments_info")):
            raise UserError(f"{path}: annotation {k} needs image_id, file_name and segments_info")
        for s in ann["segments_info"]:
            if not isinstance(s, dict) or "id" not in s or "category_id" not in s:
                raise UserError(f"{path}: image {ann['image_id']} has a segment without id or category_id")
    return data


def _pairs(jobs: list[tuple[T, Path, Path]], workers: int) -> Iterator[tuple[T, np.ndarray, np.ndarray]]:
    def load(job: tuple[T, Path, Path]) -> tuple[T, np.ndarray, np.ndarray]:
        ann, gt_path, pred_path = job
        return ann, read_panoptic_png(gt_path), read_panoptic_png(pred_path)

    if workers <= 1:
        yield from map(load, jobs)
        return
    # libpng, zlib and numpy release the GIL: a small window of images decodes in parallel
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[tuple[T, np.ndarray, np.ndarray]]] = deque()
        for job in jobs:
            pending.append(pool.submit(load, job))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def pq_compute(
    gt_json: str | Path,
    gt_folder: str | Path,
    pred_json: str | Path,
    pred_folder: str | Path,
    *,
    workers: int = 1,
    progress: Iterable | None = None,
) -> dict[str, Any]:
    """PQ of the predictions against the ground truth, every gt image needing a prediction of the same
    image_id (as `evaluatePanoptic` does). Returns `PQStats.average()`. `workers` threads decode PNGs."""
    gt = load_panoptic_json(gt_json, "ground-truth panoptic JSON")
    pred = load_panoptic_json(pred_json, "predicted panoptic JSON")
    if not isinstance(gt.get("categories"), list) or not gt["categories"]:
        raise UserError(f"{gt_json} has no categories — ground-truth panoptic JSON lists them with isthing")
    stats = PQStats(gt["categories"])
    by_image = {a["image_id"]: a for a in pred["annotations"]}
    jobs = []
    for ann in gt["annotations"]:
        p = by_image.get(ann["image_id"])
        if p is None:
            raise UserError(f"{pred_json} has no prediction for image_id {ann['image_id']!r}; predict every image")
        jobs.append(((ann, p), Path(gt_folder) / ann["file_name"], Path(pred_folder) / p["file_name"]))
    for (ann, p), gt_ids, pred_ids in _pairs(jobs, workers):
        stats.add_image(gt_ids, ann["segments_info"], pred_ids, p["segments_info"], where=f"image {ann['image_id']}")
    return stats.average()


class PanopticMetric:
    """`--metric pq` inside `mtl eval`: streams (gt, prediction) pairs of id maps and segments_info."""

    kind = "panoptic"

    def __init__(self, categories: list[dict[str, Any]]) -> None:
        self.stats = PQStats(categories)

    def update(self, gt_ids, gt_segments, pred_ids, pred_segments, where: str = "") -> None:
        self.stats.add_image(gt_ids, gt_segments, pred_ids, pred_segments, where)

    def sync(self) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        import torch

        s = self.stats
        packed = torch.tensor(np.concatenate([s.iou, s.tp, s.fp, s.fn]), dtype=torch.float64)
        dist.all_reduce(packed)
        k = len(s.iou)
        a = packed.numpy()
        s.iou, s.tp, s.fp, s.fn = a[:k], *(a[i * k : (i + 1) * k].round().astype(np.int64) for i in (1, 2, 3))

    def compute(self) -> dict[str, Any]:
        return {"value": self.stats.average()["All"]["pq"], "details": pq_details(self.stats)}


def pq_details(stats: PQStats) -> dict[str, Any]:
    """The JSON `mtl eval` saves for pq: overall / things / stuff and per class (name, isthing, counts)."""
    res = stats.average()
    classes = []
    for k, c in enumerate(stats.categories):
        row = {"id": int(c["id"]), "name": c.get("name", str(c["id"])), "isthing": int(c.get("isthing", 0))}
        row.update(res["per_class"].get(int(c["id"]), {"pq": 0.0, "sq": 0.0, "rq": 0.0}))
        row.update(tp=int(stats.tp[k]), fp=int(stats.fp[k]), fn=int(stats.fn[k]))
        classes.append(row)
    return {
        "all": res["All"],
        "things": res["Things"],
        "stuff": res["Stuff"],
        "classes": classes,
        "rule": "COCO panopticapi / cityscapesscripts evalPanopticSemanticLabeling (IoU > 0.5)",
    }


def evaluate_panoptic_files(gt: Any, predictions: Path, progress: bool = False) -> dict[str, Any]:
    """pq of saved panoptic predictions (DIR/panoptic.json + DIR/panoptic/<file_name>, COCO panoptic format,
    image_id = the prepared split's image id) against a prepared split (`predictions.GroundTruth`): its
    kept panoptic files, else ground truth derived from its instances and semantic maps."""
    from mtlcli.data.panoptic import PanopticTruth
    from mtlcli.data.prepared import read_label_png, semantic_path

    pred_json = predictions / "panoptic.json" if predictions.is_dir() else predictions
    pred = load_panoptic_json(pred_json, "predicted panoptic JSON (--save-predictions writes DIR/panoptic.json)")
    folder = pred_json.parent / "panoptic"
    truth = PanopticTruth(gt.root, gt.split, gt.meta)
    metric = PanopticMetric(truth.categories)
    by_image = {a["image_id"]: a for a in pred["annotations"]}
    from pycocotools import mask as mask_utils

    for img in gt.images():
        stem = img.get("stem") or Path(img["file_name"]).stem

        def derive(img=img, stem=stem):
            sem_file = semantic_path(gt.root, gt.split, stem)
            sem = read_label_png(sem_file) if sem_file.is_file() else None
            anns = gt.coco.imgToAnns.get(img["id"], [])
            masks = [mask_utils.decode(gt.coco.annToRLE(a)).astype(bool) for a in anns]
            return sem, masks, [a["category_id"] for a in anns], [a.get("iscrowd", 0) for a in anns]

        truth_pair = truth.get(stem, derive)
        if truth_pair is None:
            continue
        p = by_image.get(img["id"])
        if p is None:
            raise UserError(
                f"{pred_json} has no prediction for image {stem} (image_id {img['id']}); predict every image"
            )
        pred_ids = read_panoptic_png(folder / p["file_name"])
        metric.update(truth_pair[0], truth_pair[1], pred_ids, p["segments_info"], where=f"image {stem}")
    return metric.compute()
