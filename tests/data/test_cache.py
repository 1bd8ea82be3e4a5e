"""data.cache = "ram": cached samples are the uncached ones (two epochs, random augmentation, loader
workers), the cache hands out copies, skips what it cannot read, refuses to outgrow memory, and a bad
value of the key or of `mtl train --cache` is one line and exit status 2."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from mtlcli.cli.main import main
from mtlcli.data.cache import RAM_SHARE, fill_ram_cache, planned_bytes
from mtlcli.data.dataset import PreparedDataset, collate
from mtlcli.data.transforms import build_transforms
from mtlcli.data.unreadable import SkipUnreadable
from mtlcli.engine.data import SeededSamples, make_loader
from mtlcli.engine.distributed import DistInfo, TrainSampler
from mtlcli.engine.train import train
from mtlcli.errors import UserError
from mtlcli.recipes import load_recipe
from tests.data.test_dataset import build_tiny_prepared
from tests.engine.tiny_model import TINY_RECIPE, tiny_recipe, tiny_registered, train_losses, write_recipe  # noqa: F401

AUGMENTATIONS = {
    "ssd": {"min_size": 48},  # photometric distortion, zoom-out, IoU crop, flip
    "cityscapes": {"min_size": 48, "scale_range": [0.5, 1.5], "crop_size": [40, 72], "color_jitter": 0.3},
}
TARGETS = ("masks", "semantic", "dt")


def dataset(root: Path, augmentation: str | None = None, **kw) -> PreparedDataset:
    tf = build_transforms(augmentation, True, **AUGMENTATIONS[augmentation]) if augmentation else None
    return PreparedDataset(root, "train", transforms=tf, targets=TARGETS, compact=True, **kw)


def cached(ds: PreparedDataset) -> PreparedDataset:
    ds.ram = fill_ram_cache(ds, None, note=None)
    assert ds.ram is not None and len(ds.ram) == len(ds)

    def no_files(index: int):
        raise AssertionError(f"sample {index} was decoded from its files although it is cached")

    ds.decode = no_files  # from here on every sample must come out of memory (loader workers inherit this)
    return ds


def assert_same(a, b) -> None:
    (image_a, target_a), (image_b, target_b) = a, b
    assert type(image_a) is type(image_b) and torch.equal(image_a, image_b)
    assert target_a.keys() == target_b.keys()
    for key, value in target_a.items():
        if torch.is_tensor(value):
            assert type(value) is type(target_b[key]) and value.dtype == target_b[key].dtype, key
            assert torch.equal(value, target_b[key]), key
        else:
            assert value == target_b[key], key
    if "boxes" in target_a:
        assert target_a["boxes"].canvas_size == target_b["boxes"].canvas_size


@pytest.mark.parametrize("augmentation", sorted(AUGMENTATIONS))
def test_cached_samples_equal_uncached_over_two_epochs(synthetic_prepared, augmentation):
    plain = SeededSamples(dataset(synthetic_prepared, augmentation), seed=3)
    ram = SeededSamples(cached(dataset(synthetic_prepared, augmentation)), seed=3)
    n = len(plain)
    items = list(itertools.islice(TrainSampler(n, seed=3), 2 * n))  # (position, index): two shuffled epochs
    assert sorted(i for _, i in items[:n]) == list(range(n)) and items[:n] != items[n:]
    for item in items:
        assert_same(ram[item], plain[item])


def test_label_maps_and_missing_pngs_are_cached_as_decoded(tmp_path):
    root = build_tiny_prepared(tmp_path)  # b.png has no semantic / dt PNG: all-ignore and all-0 maps
    label_map = {"seg": {"person": "thing", "car": "thing"}}
    plain = dataset(root, label_map=label_map)
    ram = cached(dataset(root, label_map=label_map))
    for i in range(len(plain)):
        assert_same(ram[i], plain[i])
    assert (ram[1][1]["semantic"] == 255).all() and (ram[1][1]["dt"] == 0).all()


def test_loader_workers_read_the_cache_filled_before_they_start(synthetic_prepared):
    def batches(ds: PreparedDataset, workers: int) -> list:
        loader = make_loader(ds, micro_batch=2, workers=workers, seed=5, info=DistInfo(), start=0, collate=collate)
        return [next(loader) for _ in range(2 * len(ds) // 2)]  # two epochs

    expected = batches(dataset(synthetic_prepared, "cityscapes"), workers=0)
    got = batches(cached(dataset(synthetic_prepared, "cityscapes")), workers=2)
    for (images_a, targets_a), (images_b, targets_b) in zip(got, expected, strict=True):
        for sample_a, sample_b in zip(
            zip(images_a, targets_a, strict=True), zip(images_b, targets_b, strict=True), strict=True
        ):
            assert_same(sample_a, sample_b)


def test_the_cache_hands_out_copies(tmp_path):
    ds = cached(dataset(build_tiny_prepared(tmp_path)))
    image, target = ds[0]
    reference = (image.clone(), {k: v.clone() if torch.is_tensor(v) else v for k, v in target.items()})
    image.zero_()  # a transform or a model writing into its input must not change the cache
    target["semantic"].fill_(7)
    assert_same(ds[0], reference)


def test_an_unreadable_sample_is_left_out_and_skipped_as_without_the_cache(tmp_path, capsys):
    root = build_tiny_prepared(tmp_path)
    (tmp_path / "src" / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 20)
    ds = dataset(root)
    ds.ram = fill_ram_cache(ds, None, note=None)
    assert ds.ram.slots[0] is None and ds.ram.slots[1] is not None and len(ds.ram) == 1
    skipping = SkipUnreadable(ds)
    assert_same(skipping[0], dataset(root)[1])  # sample 0 replaced by the next readable one
    assert "skipping unreadable images/a.png" in capsys.readouterr().err


def test_memory_guard_falls_back_with_a_note(tmp_path):
    ds = dataset(build_tiny_prepared(tmp_path))
    total, sizes = planned_bytes(ds)
    assert sizes == [40 * 64 * 5, 24 * 32 * 5] and total == sum(sizes)  # RGB + semantic + dt, uint8
    most = int(total / RAM_SHARE)  # the memory in which the cache just fits
    notes: list[str] = []
    assert fill_ram_cache(ds, most - 1, note=notes.append) is None
    assert len(notes) == 1 and "training without the cache" in notes[0] and "\n" not in notes[0]
    assert fill_ram_cache(ds, 2 * most - 1, copies=2, note=notes.append) is None
    assert "2 training processes" in notes[1]
    cache = fill_ram_cache(ds, most, note=notes.append)
    assert cache is not None and cache.nbytes == total and "2 of 2 training images" in notes[2]


@pytest.mark.usefixtures("tiny_registered")
def test_training_falls_back_to_files_when_the_cache_would_not_fit(tmp_path, synthetic_prepared, monkeypatch, capsys):
    import mtlcli.engine.limits
    from tests.conftest import SYNTHETIC_SIZE, SYNTHETIC_TRAIN

    # The tiny model's loss reads `semantic`: its cache holds RGB + one map per pixel. With 1.5x that
    # available the cache (more than half) must not be filled, while the batch check still passes.
    cache_bytes = SYNTHETIC_TRAIN * SYNTHETIC_SIZE[0] * SYNTHETIC_SIZE[1] * 4
    monkeypatch.setattr(mtlcli.engine.limits, "available_bytes", lambda device: int(1.5 * cache_bytes))
    run = tmp_path / "run"
    train(tiny_recipe(tmp_path, synthetic_prepared, "data.cache=ram", "train.iterations=2"), run, progress=False)
    assert "training without the cache" in capsys.readouterr().err
    assert [r["iteration"] for r in train_losses(run)] == [1, 2]


@pytest.mark.usefixtures("tiny_registered")
@pytest.mark.parametrize(
    "override, message",
    [
        ("data.cache=disk", "data.cache = 'disk'; valid: none, ram"),
        ("data.cache=true", "data.cache = 'true'; valid: none, ram"),
    ],
)
def test_bad_cache_values_are_rejected(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        load_recipe(write_recipe(tmp_path), [override])
    text = TINY_RECIPE.replace('dataset = "synthetic"', 'dataset = "synthetic"\ncache = true')
    with pytest.raises(UserError, match="data.cache = True; valid: none, ram"):
        load_recipe(write_recipe(tmp_path, text))


@pytest.mark.usefixtures("tiny_registered")
def test_bad_cache_flag_is_one_line_and_exit_2(tmp_path, synthetic_prepared, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "train",
                "--recipe",
                str(write_recipe(tmp_path)),
                "--data",
                str(synthetic_prepared),
                "--out",
                str(tmp_path / "run"),
                "--quiet",
                "--cache",
                "disk",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --cache disk: valid values are none, ram"
    assert not (tmp_path / "run").exists()
