"""`mtl predict`: run a trained model over image files, folders, glob patterns and videos.

    OUT/overlays/<rel>.png     the image with the semantic map, masks and captioned boxes, titled, above a
                               legend of the classes present (boxes too); small images enlarged to be read,
                               as `mtl viz predictions` draws them
    OUT/semantic/<rel>.png     uint8 class indices of the model's seg classes (255 = none)
    OUT/labelIds/<rel>.png     the same as Cityscapes labelIds (models trained on Cityscapes classes)
    OUT/detections.json        COCO results [{image_id, file_name, category_id, category_name, bbox
                               [x, y, w, h], score, segmentation (RLE, with --save-masks)}], category ids
                               those of the training data (its original ids for COCO-format data)
    OUT/panoptic.json + OUT/panoptic/<rel>.png   with --panoptic: COCO panoptic format (docs/panoptic.md)
    OUT/images.json            {"images": [{id, file_name, height, width}], "categories": [{id, name}]}
    OUT/<rel>.mp4 + .jsonl     a video: the annotated video (the video's own size, no title or legend), and
                               one JSON line per frame
                               {"frame", "time", "detections": [...]} (boxes in the frame's pixels)

`<rel>` is an image's path relative to the folder (or the glob's fixed part) it was found under, so
`a/x.jpg` and `b/x.jpg` never share an output. Images are decoded on DataLoader workers, run through the
model in batches on the device, and drawn and written by a small thread pool while the next batch runs.
Every output file goes through `Outputs.path`, the one place that decides where a file may be written.
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtlcli.data.prepared import output_name
from mtlcli.engine.result import render_result, semantic_png
from mtlcli.errors import UserError
from mtlcli.safety import atomic_path, atomic_save_image, clean_orphans, refuse_protected_output

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


# --------------------------------------------------------------------------------------------- sources


@dataclass
class Source:
    path: Path
    rel: Path  # output name without suffix, unique over the run (`mtlcli.data.prepared.output_name`)
    image: dict[str, Any] | None = None  # {id, file_name} to write for it (a dataset's own), else 1..N

    @property
    def is_video(self) -> bool:
        return self.path.suffix.lower() in VIDEO_SUFFIXES


def _media(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES


def expand_sources(sources: Sequence[str | Path]) -> list[Source]:
    """Files as given, folders recursively (sorted), glob patterns (`**` allowed); each with a unique
    relative output name. Nothing found, or a path that does not exist, is a UserError."""
    found: list[tuple[Path, Path]] = []
    for text in map(str, sources):
        p = Path(text).expanduser()
        if p.is_dir():
            found += [(f, f.relative_to(p)) for f in sorted(p.rglob("*")) if _media(f)]
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
                raise UserError(
                    f"{p} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a video ({', '.join(VIDEO_SUFFIXES)})"
                )
            found.append((p, Path(p.name)))
        elif glob.has_magic(text):
            base = Path(text.split("*")[0].split("?")[0].split("[")[0])
            base = base if text.endswith(os.sep) or base.is_dir() else base.parent
            matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(text), recursive=True))]
            files = [m for m in matches if _media(m)]
            if not files:
                raise UserError(f"the pattern {text!r} matches no image or video file")
            found += [(f, f.relative_to(base) if base in f.parents else Path(f.name)) for f in files]
        else:
            raise UserError(f"{text} does not exist — give image files, folders, glob patterns or videos")
    if not found:
        raise UserError(f"no image or video files in {', '.join(map(str, sources))}")
    out: list[Source] = []
    taken: set[str] = set()
    seen: set[Path] = set()
    for path, rel in found:
        resolved = path.resolve()
        if resolved in seen:  # the same file through two arguments
            continue
        seen.add(resolved)
        stem = rel.with_suffix("")
        name, k = stem, 2
        while str(name).lower() in taken:
            name = stem.with_name(f"{stem.name}-{k}")
            k += 1
        taken.add(str(name).lower())
        out.append(Source(path, name))
    return out


# --------------------------------------------------------------------------------------------- outputs


def output_names(source: Source) -> list[Path]:
    """The files `mtl predict` may write for `source`, relative to --out."""
    if source.is_video:
        return [Path(f"{source.rel}.mp4"), Path(f"{source.rel}.jsonl")]
    return [Path(sub) / f"{output_name(source.rel)}.png" for sub in ("overlays", "semantic", "labelIds")]


class Outputs:
    """The output folder: every file the command writes is named through `path`, which refuses names
    outside the folder and names of the inputs (an output is never an input, --force or not), and is
    where a guard against writing into datasets or runs plugs in. Every file is written under a
    temporary name and renamed when complete (`mtlcli.safety.atomic_path` / `atomic_save_image`), so a
    killed run leaves no half-written video, JSON-lines file or PNG under its final name."""

    def __init__(self, root: Path, force: bool = False, inputs: Sequence[Source] = ()) -> None:
        root = Path(root).expanduser()
        if root.exists() and not root.is_dir():
            raise UserError(f"--out {root} exists and is not a folder; choose another path")
        if root.is_dir() and any(root.iterdir()) and not force:
            raise UserError(
                f"--out {root} is not empty; choose another folder or pass --force to overwrite files in it"
            )
        refuse_protected_output(root, "--out")  # never inside a prepared dataset or a run's checkpoints/
        self.root = root.resolve()
        self.inputs = {s.path.resolve(): s for s in inputs}
        for source in inputs:  # before anything is written: an output may not replace an input
            for name in output_names(source):
                self.path(name, create=False)
        for summary in ("detections.json", "images.json"):
            self.path(summary, create=False)
        root.mkdir(parents=True, exist_ok=True)
        for folder in (self.root, *(p for p in self.root.rglob("*") if p.is_dir())):
            clean_orphans(folder)  # the temporary files of a killed run

    def path(self, *parts: str | Path, create: bool = True) -> Path:
        p = self.root.joinpath(*map(str, parts)).resolve()
        if self.root not in p.parents:
            raise UserError(f"refusing to write {p}: outside --out {self.root}")
        if p in self.inputs:
            raise UserError(
                f"--out {self.root}: the output {p.name} would overwrite the input {p} (even with --force) — "
                "choose an --out outside the input folders"
            )
        if create:
            p.parent.mkdir(parents=True, exist_ok=True)
        return p


def default_out() -> Path:
    """runs/predict/expN, N one past the highest existing."""
    from mtlcli.engine.rundir import next_run_dir

    return next_run_dir(Path("runs") / "predict")


# --------------------------------------------------------------------------------------------- drawing


# --------------------------------------------------------------------------------------------- loading


class ImageFiles(torch.utils.data.Dataset):
    """(index, uint8 [3, H, W] or None, error text) per image file, decoded in a loader worker."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from mtlcli.data.images import ImageError, read_rgb_tensor  # the one reader: EXIF, 16 bits, bombs

        try:
            return i, read_rgb_tensor(self.files[i]), ""
        except ImageError as exc:
            return i, None, str(exc)


def _collate(batch):
    return batch


# --------------------------------------------------------------------------------------------- running


@dataclass
class PredictOptions:
    score_threshold: float = 0.3  # what the overlays draw
    json_threshold: float | None = None  # what detections.json keeps (None: score_threshold)
    iou: float | None = None  # NMS IoU (None: the model's own)
    max_det: int | None = None  # detections kept per image (None: the model's own)
    classes: list[int] | None = None  # labels 1..K kept (None: all)
    size: tuple[int, int] | None = None  # network input size (None: the model's own)

    def network_knobs(self) -> dict[str, Any]:
        """The keyword arguments of `Predictor.raw` that differ from the model's own settings."""
        return {k: v for k, v in (("iou", self.iou), ("size", self.size)) if v is not None}

    batch_size: int = 8
    workers: int = 2
    save_json: bool = True
    save_images: bool = True
    save_masks: bool = False
    progress: bool = True
    panoptic: bool = False  # OUT/panoptic.json + OUT/panoptic/<rel>.png (COCO panoptic format)


@dataclass
class PredictSummary:
    images: int = 0
    frames: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    model_seconds: float = 0.0
    out: Path | None = None
    written: list[Path] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return (self.images + self.frames) / self.seconds if self.seconds else 0.0


class _Writer:
    """Draws and writes one image's outputs off the main thread; collects the JSON results."""

    def __init__(self, model: Any, outputs: Outputs, opts: PredictOptions) -> None:
        self.model, self.outputs, self.opts = model, outputs, opts
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.pending: list[Future] = []
        self.results: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []
        self.label_ids = None
        self.panoptic: list[dict[str, Any]] = []
        if model.card.get("cityscapes"):
            from mtlcli.metrics.segmentation import cityscapes_label_luts

            self.label_ids = cityscapes_label_luts(model.seg_classes)[1]

    def add(self, source: Source, image: torch.Tensor, result: Any, kept: Any = None) -> None:
        """One image: `result` is drawn, `kept` (default `result`) goes into detections.json."""
        known = source.image or {}
        image_id = known.get("id", len(self.images) + 1)
        file_name = known.get("file_name", str(source.path))
        h, w = result.size
        self.images.append(
            {"id": image_id, "file_name": file_name, "height": h, "width": w, "name": output_name(source.rel)}
        )
        if self.opts.save_json:
            kept = result if kept is None else kept
            for r in kept.to_coco(image_id, self.model.det_category_ids, with_masks=self.opts.save_masks):
                self.results.append({**r, "file_name": file_name})
        if self.opts.panoptic and result.panoptic is not None:
            segments = [{k: v for k, v in seg.items() if k != "isthing"} for seg in result.panoptic[1]]
            self.panoptic.append(
                {"image_id": image_id, "file_name": f"{output_name(source.rel)}.png", "segments_info": segments}
            )
        self.pending.append(self.pool.submit(self._write, source, image, result))
        if len(self.pending) > 4 * self.opts.batch_size:
            self.pending.pop(0).result()

    def _write(self, source: Source, image: torch.Tensor, result: Any) -> None:
        rel = Path(output_name(source.rel) + ".png")
        if self.opts.save_images:
            panel = render_result(
                image,
                result,
                self.model.det_classes,
                self.model.palette,
                titled=True,
                score_threshold=self.opts.score_threshold,
            )
            atomic_save_image(self.outputs.path("overlays", rel), panel.permute(1, 2, 0).contiguous().numpy())
        if self.opts.panoptic and result.panoptic is not None:
            from mtlcli.ops.panoptic import id2rgb

            atomic_save_image(self.outputs.path("panoptic", rel), id2rgb(result.panoptic[0]))
        if self.opts.save_json and result.semantic is not None:
            sem = result.semantic.clamp(0, 255).to(torch.uint8).numpy()
            atomic_save_image(self.outputs.path("semantic", rel), semantic_png(sem, self.model.palette))
            if self.label_ids is not None:
                atomic_save_image(self.outputs.path("labelIds", rel), self.label_ids[sem])

    def close(self) -> None:
        for f in self.pending:
            f.result()
        self.pool.shutdown()
        if self.opts.save_json and self.images:
            from mtlcli.data.prepared import atomic_write_text

            atomic_write_text(self.outputs.path("detections.json"), json.dumps(self.results))
            categories = [
                {"id": int(i), "name": n}
                for i, n in zip(self.model.det_category_ids, self.model.det_classes, strict=True)
            ]
            atomic_write_text(
                self.outputs.path("images.json"),
                json.dumps({"images": self.images, "categories": categories}, indent=1),
            )
        if self.opts.panoptic and self.panoptic:
            from mtlcli.engine.panoptic import panoptic_categories

            data = {"images": self.images, "annotations": self.panoptic, "categories": panoptic_categories(self.model)}
            atomic_write_text(self.outputs.path("panoptic.json"), json.dumps(data))


def predict_sources(
    model: Any,
    sources: Sequence[str | Path] | Sequence[Source],
    out: Path,
    opts: PredictOptions,
    force: bool = False,
    decoder: torch.utils.data.Dataset | None = None,
) -> PredictSummary:
    """Run `model` (an `mtlcli.api.Predictor`) over the sources into `out`; returns the summary.

    `sources`: paths, folders and patterns (`expand_sources`), or `Source`s already made (with `decoder`, the
    loader dataset that decodes them in that order: `mtlcli.engine.predict_data.split_sources`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mtlcli.engine.result import output_to_result

    for value in (opts.score_threshold, opts.json_threshold):
        if value is not None and not 0.0 <= value <= 1.0:
            raise UserError(f"--score-threshold must lie in 0..1, got {value}")
    given = list(sources)
    items = [s for s in given if isinstance(s, Source)]
    if len(items) != len(given):
        items = expand_sources([s for s in given if not isinstance(s, Source)])
    outputs = Outputs(out, force=force, inputs=items)
    images = [s for s in items if not s.is_video]
    videos = [s for s in items if s.is_video]
    summary = PredictSummary(out=outputs.root)
    writer = _Writer(model, outputs, opts)
    columns = [
        TextColumn("[bold]predict[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[rate]}"),
    ]
    t0 = time.perf_counter()
    with Progress(*columns, disable=not opts.progress, transient=False) as bar:
        if images:
            task = bar.add_task("images", total=len(images), rate="")
            loader = torch.utils.data.DataLoader(
                decoder if decoder is not None else ImageFiles([s.path for s in images]),
                batch_size=opts.batch_size,
                num_workers=opts.workers,
                collate_fn=_collate,
                pin_memory=str(model.device).startswith("cuda"),
            )
            for batch in loader:
                good = [(i, img) for i, img, err in batch if img is not None]
                for i, img, err in batch:
                    if img is None:
                        summary.skipped.append((str(images[i].path), err))
                if good:
                    t_model = time.perf_counter()
                    floats = [img.to(model.device, non_blocking=True).float().div_(255) for _, img in good]
                    raw = model.raw(floats, **opts.network_knobs())

                    def result(o: Any, img: torch.Tensor, threshold: float) -> Any:
                        size = tuple(img.shape[-2:])
                        return output_to_result(
                            o,
                            model.det_classes,
                            model.seg_classes,
                            size,
                            threshold,
                            classes=opts.classes,
                            max_det=opts.max_det,
                        )

                    drawn = [result(o, img, opts.score_threshold) for (_, img), o in zip(good, raw, strict=True)]
                    kept = drawn
                    if opts.json_threshold is not None and opts.json_threshold != opts.score_threshold:
                        kept = [result(o, img, opts.json_threshold) for (_, img), o in zip(good, raw, strict=True)]
                    summary.model_seconds += time.perf_counter() - t_model
                    if opts.panoptic:
                        for shown, o in zip(drawn, raw, strict=True):
                            shown.panoptic = model.panoptic_of(o)
                    for (i, img), shown, keep in zip(good, drawn, kept, strict=True):
                        writer.add(images[i], img, shown, keep)
                    summary.images += len(good)
                done = summary.images + len(summary.skipped)
                bar.update(task, completed=done, rate=f"{summary.images / (time.perf_counter() - t0):.1f} images/s")
        for video in videos:
            summary.frames += _predict_video(model, video, outputs, opts, bar, summary)
        writer.close()
    summary.seconds = time.perf_counter() - t0
    return summary


# ----------------------------------------------------------------------------------------------- video


def _predict_video(
    model: Any, source: Source, outputs: Outputs, opts: PredictOptions, bar: Any, summary: PredictSummary
) -> int:
    """Decode a video with PyAV, predict its frames in batches, write the annotated video and one JSON
    line per frame, each under a temporary name renamed when the video is done (a killed run leaves
    neither under its final name). Returns the number of frames; a video without a decodable frame
    writes nothing and is listed among the skipped files."""
    try:
        import av
    except ImportError:
        raise UserError("reading videos needs PyAV: pip install av") from None
    from mtlcli.engine.result import output_to_result

    try:
        container = av.open(str(source.path))
    except (av.error.FFmpegError, OSError) as exc:
        summary.skipped.append((str(source.path), f"cannot open video ({exc})"))
        return 0
    with container:
        if not container.streams.video:
            summary.skipped.append((str(source.path), "no video stream"))
            return 0
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or 25
        total = stream.frames or None
        task = bar.add_task(source.path.name, total=total, rate="")
        video_path = outputs.path(f"{source.rel}.mp4")
        lines_path = outputs.path(f"{source.rel}.jsonl")
        out_container = None
        failed: list[str] = []
        frames, t0 = 0, time.perf_counter()
        with atomic_path(lines_path) as lines_tmp, atomic_path(video_path) as video_tmp:
            try:
                with open(lines_tmp, "w") as lines:
                    batch: list[tuple[int, float, torch.Tensor]] = []

                    def flush() -> None:
                        nonlocal out_container
                        floats = [img.to(model.device).float().div_(255) for _, _, img in batch]
                        raw = model.raw(floats, **opts.network_knobs())
                        for (index, t, img), o in zip(batch, raw, strict=True):
                            result = output_to_result(
                                o, model.det_classes, model.seg_classes, tuple(img.shape[-2:]), opts.score_threshold
                            )
                            dets = result.to_coco(index, model.det_category_ids, with_masks=opts.save_masks)
                            for d in dets:
                                d.pop("image_id")
                            lines.write(json.dumps({"frame": index, "time": round(t, 4), "detections": dets}) + "\n")
                            if opts.save_images:
                                panel = render_result(img, result, model.det_classes, model.palette, legend=False)
                                if out_container is None:
                                    out_container, _ = _open_writer(video_tmp, rate, panel.shape[-1], panel.shape[-2])
                                stream_out = out_container.streams.video[0]
                                frame = av.VideoFrame.from_ndarray(panel.permute(1, 2, 0).numpy(), format="rgb24")
                                for packet in stream_out.encode(frame):
                                    out_container.mux(packet)
                        batch.clear()

                    for frame in _frames(container, stream, failed):
                        t = float(frame.time) if frame.time is not None else frames / float(rate)
                        rgb = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                        batch.append((frames, t, rgb))
                        frames += 1
                        if len(batch) == opts.batch_size:
                            flush()
                            bar.update(
                                task, completed=frames, rate=f"{frames / (time.perf_counter() - t0):.1f} frames/s"
                            )
                    if batch:
                        flush()
                    bar.update(
                        task, completed=frames, total=frames, rate=f"{frames / (time.perf_counter() - t0):.1f} frames/s"
                    )
            finally:
                if out_container is not None:
                    for packet in out_container.streams.video[0].encode():
                        out_container.mux(packet)
                    out_container.close()
            if out_container is None or failed:
                video_tmp.unlink()  # no annotated video (--no-save-images, or no frame): nothing to rename
            if frames == 0 or failed:
                lines_tmp.unlink()
                why = f"cannot decode frame {frames} ({failed[0]})" if failed else "the video has no frame"
                summary.skipped.append((str(source.path), f"{why}; nothing written for it"))
                return 0
    return frames


def _frames(container: Any, stream: Any, failed: list[str]):
    """The decoded frames of `stream`; a decoding error ends them, its text appended to `failed`."""
    import av

    try:
        yield from container.decode(stream)
    except av.error.FFmpegError as exc:
        failed.append(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)


def _open_writer(path: Path, rate: Any, width: int, height: int):
    import av

    container = av.open(str(path), mode="w", format="mp4")  # a temporary name: the format is not guessed
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    stream: Any = container.add_stream(codec, rate=rate)  # a VideoStream: add_stream is typed for every kind
    # yuv420p needs even sides
    stream.width, stream.height = width - width % 2, height - height % 2
    stream.pix_fmt = "yuv420p"
    return container, stream
