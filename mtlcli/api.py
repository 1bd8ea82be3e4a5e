"""The Python API: a trained model in three lines.

    from mtlcli import load_model
    model = load_model("runs/ivanet-tiny-synthetic/exp1")      # a run directory or a checkpoint file
    result = model.predict("street.jpg")                        # path, PIL image, HxWx3 uint8 array, tensor
    results = model.predict(["a.jpg", "b.png"])                 # a list is run in batches

A `Result` holds, in the image's own pixel frame, what the model outputs: `boxes` [N, 4] xyxy float,
`scores` [N], `labels` [N] int64 (1..K) and their `class_names`, `masks` [N, H, W] bool (models with an
instance-mask head), `semantic` [H, W] int64 class indices (the argmax of the segmentation scores) with
`seg_classes` naming them, and `panoptic` (ids [H, W], segments_info with category ids) from the
panoptic merge of docs/panoptic.md. Everything the model needs (weights, recipe, class names, palette) comes from
the checkpoint: no dataset folder is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mtlcli.devices import resolve_device
from mtlcli.engine.result import ImageLike, Result, check_unit_range, output_to_result, to_image_tensor
from mtlcli.errors import UserError

__all__ = [
    "ImageLike",
    "OnnxPredictor",
    "check_unit_range",
    "Predictor",
    "Result",
    "load_model",
    "output_to_result",
    "resolve_checkpoint",
    "to_image_tensor",
]


class Predictor:
    """A trained model with its classes: `predict(image or list)`. Build it with `load_model`.

    Attributes: network (the nn.Module, eval mode), recipe (resolved recipe), det_classes, seg_classes,
    palette, det_category_ids (original ids of the training data), device, checkpoint (path).
    """

    def __init__(
        self,
        network: nn.Module,
        recipe: dict[str, Any],
        card: dict[str, Any],
        device: str,
        checkpoint: Path | None = None,
    ) -> None:
        self.network, self.recipe, self.card = network.eval(), recipe, card
        self.det_classes: list[str] = list(card["det_classes"])
        self.seg_classes: list[str] = list(card["seg_classes"])
        self.palette: list[list[int]] = [list(c) for c in card["palette"]]
        self.det_category_ids: list[int] = list(card.get("det_category_ids") or range(1, len(self.det_classes) + 1))
        self.device, self.checkpoint = device, checkpoint
        # True (the default): single-stage families run through EndToEnd, the exported graph's own code
        # (no full-resolution softmax: the class map is the argmax of the upsampled logits, which is what
        # the panoptic merge and `mtl eval` use); False: the network's own eval output (DESIGN.md §4)
        self.fast = True

    def __repr__(self) -> str:
        return (
            f"Predictor({self.recipe['model'].get('name')!r}, {len(self.det_classes)} det classes, "
            f"{len(self.seg_classes)} seg classes, device={self.device!r})"
        )

    @torch.inference_mode()
    def raw(
        self, images: Sequence[torch.Tensor], *, iou: float | None = None, size: tuple[int, int] | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """The model's own outputs (DESIGN.md §4) for float [3, H, W] images, on the model's device
        (`iou`, `size`: the NMS IoU and network input size for this call)."""
        from mtlcli.models.endtoend import is_two_stage, override_settings

        images = [img.to(self.device, non_blocking=True) for img in images]
        if self.fast and not is_two_stage(self.network) and images:
            return self.fast_outputs(images, iou=iou, size=size)
        with override_settings(self.network, nms_thresh=iou, size=size):
            return self.network(images)

    def fast_outputs(
        self, images: Sequence[torch.Tensor], *, iou: float | None = None, size: tuple[int, int] | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """Single-stage families through `EndToEnd` (the exported graph's own code): images of one size
        batched, the semantic map as the argmax of the upsampled logits (no full-resolution softmax;
        `mtl eval` takes the argmax of the softmax of the same logits: equal but where exp rounds two
        logits to the same float). Outputs as `raw` (masks none, `semantic` [H, W] uint8)."""
        from mtlcli.models.endtoend import EndToEnd, override_settings, split_outputs

        key = (iou, tuple(size) if size else None)
        if size is not None:
            with override_settings(self.network, size=size):  # refuses a size the default boxes do not fit
                pass
        if getattr(self, "_e2e_key", None) != key:
            self._e2e = EndToEnd(self.network, size, nms_thresh=iou).eval()
            self._e2e_key = key
        outputs: list[dict[str, torch.Tensor] | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault((int(img.shape[-2]), int(img.shape[-1])), []).append(i)
        for members in groups.values():
            batch = torch.stack([images[i].float() for i in members])
            for i, out in zip(members, split_outputs(self._e2e.run(batch), len(members)), strict=True):
                outputs[i] = out
        return outputs  # type: ignore[return-value]

    def predict(
        self,
        images: ImageLike | Iterable[ImageLike],
        *,
        score_threshold: float = 0.3,
        batch_size: int = 8,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Sequence[int | str] | None = None,
        size: tuple[int, int] | None = None,
        stream: bool = False,
    ) -> Result | list[Result] | Iterator[Result]:
        """Predictions for one image (-> Result) or a list of them (-> list[Result], run in batches of
        `batch_size`); `stream=True` gives a generator that yields Results as batches finish (videos, long
        lists: nothing is held). Detections below `score_threshold` are dropped; `iou` the NMS IoU,
        `max_det` detections kept per image, `classes` the labels (1..K) or class names kept, `size` the
        network input (h, w) — None keeps the model's own."""
        single = not isinstance(images, (list, tuple)) and not _is_iterable(images)
        if not 0.0 <= score_threshold <= 1.0:
            raise UserError(f"score_threshold must lie in 0..1, got {score_threshold}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        if iou is not None and not 0.0 <= iou <= 1.0:
            raise UserError(f"iou must lie in 0..1, got {iou}")
        if max_det is not None and max_det < 1:
            raise UserError(f"max_det must be at least 1, got {max_det}")
        opts = dict(
            score_threshold=score_threshold, iou=iou, max_det=max_det, classes=self.class_ids(classes), size=size
        )
        gen = self._stream([images] if single else images, max(1, batch_size), opts)
        if stream:
            return gen
        results = list(gen)
        return results[0] if single else results

    def class_ids(self, classes: Sequence[int | str] | None) -> list[int] | None:
        """Labels 1..K of `classes` given as labels or names; an unknown one is a UserError naming the valid."""
        if classes is None:
            return None
        ids = []
        for c in classes:
            c = c.strip() if isinstance(c, str) else c
            if isinstance(c, str) and not c.isdigit():
                if c not in self.det_classes:
                    raise UserError(f"unknown class {c!r}; this model detects: {', '.join(self.det_classes)}")
                ids.append(self.det_classes.index(c) + 1)
            elif 1 <= int(c) <= len(self.det_classes):
                ids.append(int(c))
            else:
                raise UserError(
                    f"class {c} is out of range: labels are 1..{len(self.det_classes)} ({', '.join(self.det_classes)})"
                )
        return ids

    def _stream(self, items: Iterable[ImageLike], batch_size: int, opts: dict[str, Any]) -> Iterator[Result]:
        chunk: list[ImageLike] = []
        for item in items:
            chunk.append(item)
            if len(chunk) == batch_size:
                yield from self._predict_chunk(chunk, opts)
                chunk = []
        if chunk:
            yield from self._predict_chunk(chunk, opts)

    def _predict_chunk(self, chunk: list[ImageLike], opts: dict[str, Any]) -> list[Result]:
        tensors = [to_image_tensor(x) for x in chunk]
        outputs = self.raw(tensors, iou=opts["iou"], size=opts["size"])
        results = []
        for item, img, out in zip(chunk, tensors, outputs, strict=True):
            result = self.to_result(out, img, opts, str(item) if isinstance(item, (str, Path)) else None)
            result.panoptic = self.panoptic_of(out)
            results.append(result)
        return results

    def to_result(
        self, output: dict[str, torch.Tensor], image: torch.Tensor, opts: dict[str, Any], source: str | None = None
    ) -> Result:
        """One raw output as a Result that can plot itself (it keeps the image as uint8)."""
        return output_to_result(
            output,
            self.det_classes,
            self.seg_classes,
            tuple(image.shape[-2:]),
            opts.get("score_threshold", 0.3),
            source,
            classes=opts.get("classes"),
            max_det=opts.get("max_det"),
            palette=self.palette,
            category_ids=self.det_category_ids,
            image=image if image.dtype == torch.uint8 else (image * 255).round().to(torch.uint8),
        )

    __call__ = predict

    def panoptic_of(self, output: dict[str, torch.Tensor]) -> tuple[np.ndarray, list[dict[str, Any]]] | None:
        """The panoptic merge (docs/panoptic.md) of one raw output: (ids [H, W] int32, segments_info)."""
        if "sem_seg" not in output and "masks" not in output and "semantic" not in output:
            return None
        if getattr(self, "_panoptic_maker", None) is None:
            from mtlcli.engine.panoptic import PanopticMaker, merge_settings

            self._panoptic_maker = PanopticMaker(
                self.det_classes,
                self.seg_classes,
                self.card.get("thing_classes"),
                self.card.get("panoptic_category_ids"),
                merge_settings(self.recipe),
            )
        semantic = output.get("semantic")  # the fast path's class map (argmax of the upsampled logits)
        ids, segments = self._panoptic_maker(output, semantic.long() if semantic is not None else None)
        things = self._panoptic_maker.things
        class_ids = self._panoptic_maker.class_ids
        for s in segments:
            s["isthing"] = int(class_ids.index(s["category_id"]) in things)
        return ids.astype(np.int32), segments

    def draw(self, image: ImageLike, result: Result, alpha: float = 0.5) -> torch.Tensor:
        """The overlay of `result` on `image`: uint8 [3, H + legend, W] (semantic map, masks, boxes with captions,
        in the image's own pixels; below it a legend of the classes present)."""
        from mtlcli.engine.predict import render_result

        return render_result(to_image_tensor(image), result, self.det_classes, self.palette, alpha=alpha)


def resolve_checkpoint(source: str | Path) -> Path:
    """A run directory (the checkpoint its recipe reports: last.pt, or best.pt) or a checkpoint file."""
    from mtlcli.engine.checkpoint import find_run_checkpoint

    path = Path(source).expanduser()
    if path.is_dir():
        return find_run_checkpoint(path)
    if not path.exists():
        raise UserError(f"{path} does not exist — give a run directory of `mtl train` or a checkpoint file")
    return path


def load_model(source: str | Path, *, device: str = "auto") -> Predictor:
    """The model of a run directory (the checkpoint its recipe reports: `[eval] checkpoint`, last.pt by
    default), of a checkpoint file, or of an exported `.onnx` file (run by onnxruntime on the CPU,
    `OnnxPredictor`), on `device` ("auto": CUDA when available, else CPU — as the CLI; "cpu", "cuda",
    "cuda:1"), in eval mode, with its class names and palette."""
    from mtlcli.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from mtlcli.engine.modelcard import card_of

    if str(source).lower().endswith(".onnx"):
        return OnnxPredictor(source)
    device = resolve_device(device or None)
    path = resolve_checkpoint(source)
    state = load_checkpoint(path)
    network, recipe = model_from_checkpoint(state, path)
    root = None
    if not isinstance(state.get("classes"), dict):  # an older checkpoint: its dataset may say
        from mtlcli.recipes import data_root

        root = data_root(recipe)
        root = root if (root / "dataset.json").is_file() else None
    return Predictor(network.to(device), recipe, card_of(state, recipe, root), device, path)


class OnnxPredictor(Predictor):
    """An exported model (`mtl export --format onnx`) behind the same interface, run by onnxruntime on
    the CPU: `predict` gives the same Results as the PyTorch model (within the export's parity check).
    The graph holds its thresholds (NMS IoU, detections per image, network size): `iou` and `size` are
    fixed at export (`mtl export --iou/--size`); score, classes and max_det filter its output."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        from mtlcli.engine.onnx_runtime import OnnxModel

        self.session = OnnxModel(path, threads)
        card = self.session.info.get("classes") or {}
        if "det_classes" not in card:
            raise UserError(f"{path} carries no class names; export it from a run with `mtl export --run RUN`")
        recipe = {"model": {"name": self.session.info.get("model", "onnx")}}
        nn_free = torch.nn.Identity()
        super().__init__(nn_free, recipe, card, "cpu", Path(path))

    def __repr__(self) -> str:
        det, seg = len(self.det_classes), len(self.seg_classes)
        return f"OnnxPredictor({str(self.checkpoint)!r}, {det} det classes, {seg} seg classes)"

    def raw(
        self, images: Sequence[torch.Tensor], *, iou: float | None = None, size: tuple[int, int] | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """The graph's outputs per image (boxes, scores, labels, masks [N, H, W] uint8, semantic [H, W])."""
        if iou is not None or size is not None:
            raise UserError("an exported model has its NMS IoU and size built in; export again with --iou / --size")
        outs = []
        for img in images:
            u8 = img if img.dtype == torch.uint8 else (img.clamp(0, 1) * 255).round().to(torch.uint8)
            got = self.session.per_image(u8.cpu().permute(1, 2, 0).numpy())
            outs.append({k: torch.from_numpy(v) for k, v in got.items()})
        return outs


def _is_iterable(x: Any) -> bool:
    import numpy as np
    from PIL import Image

    if isinstance(x, (str, Path, np.ndarray, torch.Tensor, Image.Image)):
        return False
    return hasattr(x, "__iter__")
