"""Issue 30, causes 1 and 2 (and the decompression bomb): one image reader for prepare, predict, the
dataset, the API and viz — 16-bit greyscale scaled (not white), EXIF orientation applied everywhere
(sizes in instances.json included), bombs refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import read_file

from mtlcli.data.images import ImageError, decode_rgb_tensor, image_size, read_rgb
from tests.safety.common import bomb_png, cli, coco_dataset, exif_rotated, flat, grey16


def test_16bit_greyscale_is_scaled_by_every_reader(tmp_path: Path):
    from mtlcli.api import to_image_tensor
    from mtlcli.viz.predictions import read_image_file

    path = tmp_path / "deep.png"
    values = grey16(path)
    expected = np.repeat((values >> 8).astype(np.uint8)[..., None], 3, axis=2)
    assert np.asarray(Image.open(path).convert("RGB")).min() == 0  # PIL's own conversion clips ...
    assert (np.asarray(Image.open(path).convert("RGB")) == 255).mean() > 0.9  # ... nearly all to white
    np.testing.assert_array_equal(read_rgb(path), expected)  # predict's reader
    np.testing.assert_array_equal(decode_rgb_tensor(read_file(str(path)), path).permute(1, 2, 0).numpy(), expected)
    viz = read_image_file(path)  # API paths and viz
    np.testing.assert_allclose(viz.permute(1, 2, 0).numpy(), expected / 255.0, atol=1e-6)
    api = to_image_tensor(Image.open(path))  # a PIL image given to the API
    np.testing.assert_allclose(api.permute(1, 2, 0).numpy(), expected / 255.0, atol=1e-6)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_applied_by_every_reader(tmp_path: Path, suffix: str):
    from mtlcli.api import to_image_tensor
    from mtlcli.viz.predictions import read_image_file

    path = tmp_path / f"phone{suffix}"
    stored = exif_rotated(path, h=20, w=40, orientation=6)  # 6: the stored image is turned 90° clockwise to view
    assert Image.open(path).size == (40, 20)
    upright = read_rgb(path)
    assert upright.shape == (40, 20, 3) and image_size(path) == (40, 20)
    if suffix == ".png":  # lossless: the pixels are the stored ones turned (np.rot90 k=-1 = clockwise)
        np.testing.assert_array_equal(upright, np.rot90(stored, k=-1))
    fast = decode_rgb_tensor(read_file(str(path)), path).permute(1, 2, 0).numpy()
    assert np.abs(fast.astype(int) - upright.astype(int)).max() <= (0 if suffix == ".png" else 2)
    assert tuple(read_image_file(path).shape) == (3, 40, 20)
    assert tuple(to_image_tensor(Image.open(path)).shape) == (3, 40, 20)


def test_decompression_bomb_refused_in_one_line(tmp_path: Path):
    bomb = bomb_png(tmp_path / "bomb.png")
    for read in (read_rgb, image_size):
        with pytest.raises(ImageError, match=r"bomb.png: 400,000,000 pixels, more than the 178,956,970"):
            read(bomb)
    from mtlcli.errors import UserError
    from mtlcli.viz.predictions import read_image_file

    with pytest.raises(UserError, match="decompression bomb"):
        read_image_file(bomb)


def _coco_images(root: Path) -> tuple[list[dict], list[dict]]:
    """Two images: a 16-bit greyscale PNG and a phone JPEG stored 20x40 with EXIF orientation 6."""
    grey16(root / "img" / "deep.png", 24, 40)
    exif_rotated(root / "img" / "phone.jpg", 20, 40, 6)
    images = [
        {"id": 1, "file_name": "deep.png", "height": 24, "width": 40},
        {"id": 2, "file_name": "phone.jpg", "height": 40, "width": 20},  # the upright size
    ]
    box = {"segmentation": [], "iscrowd": 0, "category_id": 1}
    anns = [
        {**box, "id": 1, "image_id": 1, "bbox": [2, 2, 10, 10]},
        {**box, "id": 2, "image_id": 2, "bbox": [1, 20, 8, 12]},
    ]
    return images, anns


def test_custom_coco_of_16bit_and_exif_images_prepares_upright_and_not_white(tmp_path: Path, capsys):
    from mtlcli.data.dataset import PreparedDataset

    (tmp_path / "src" / "img").mkdir(parents=True)
    images, anns = _coco_images(tmp_path / "src")
    ann = coco_dataset(tmp_path / "src", images, anns, [{"id": 1, "name": "thing"}])
    args = ["prepare", "coco", "--train-json", ann, "--train-images", tmp_path / "src" / "img"]
    assert cli([*args, "--out", tmp_path / "data", "-j", "1", "-q"]) == 0
    capsys.readouterr()
    written = json.loads((tmp_path / "data" / "train" / "instances.json").read_text())["images"]
    assert {(im["file_name"].split("/")[-1], im["height"], im["width"]) for im in written} == {
        ("deep.png", 24, 40),
        ("phone.jpg", 40, 20),
    }
    ds = PreparedDataset(tmp_path / "data", "train")
    for i in range(len(ds)):
        image, _ = ds[i]
        info = ds.image_info(i)
        assert tuple(image.shape[-2:]) == (info["height"], info["width"])
        if info["file_name"].endswith("deep.png"):
            assert float(image.mean()) < 0.75 and float(image.min()) == 0.0  # a ramp, not white
    # the unrotated size in the annotation file: skipped, saying why
    images[1] = {**images[1], "height": 20, "width": 40}
    coco_dataset(tmp_path / "src", images, anns, [{"id": 1, "name": "thing"}])
    assert cli([*args, "--out", tmp_path / "data2", "-j", "1"]) == 0
    assert "its EXIF orientation turns it" in flat(capsys.readouterr().out)


def test_predict_reader_skips_a_bomb_with_its_reason(tmp_path: Path):
    from mtlcli.engine.predict import ImageFiles

    bomb = bomb_png(tmp_path / "bomb.png")
    grey16(tmp_path / "deep.png")
    files = ImageFiles([bomb, tmp_path / "deep.png"])
    i, image, why = files[0]
    assert image is None and "decompression bomb" in why
    _, image, why = files[1]
    assert image.dtype == torch.uint8 and why == "" and int(image.max()) == 255 and int(image.min()) == 0
