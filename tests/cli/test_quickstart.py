"""`mtl quickstart` end to end on a very small synthetic city: data -> train -> eval -> viz, an
interrupted run that resumes, a finished run that is reused, other settings that need --force."""

import json
from pathlib import Path

import pytest
from PIL import Image

from mtlcli.cli.main import main
from mtlcli.viz.draw import titled_geometry

TINY = [
    "--train",
    "4",
    "--val",
    "2",
    "--size",
    "64",
    "128",
    "-j",
    "1",
    "--num-viz",
    "2",
    "--set",
    "train.iterations=4",
    "--set",
    "train.batch_size=2",
    "--set",
    "eval.interval=4",
    "--set",
    "train.checkpoint_interval=2",
    "--set",
    "model.input_size=[64,128]",
]


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code or 0


def test_quickstart_trains_evaluates_and_draws(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "qs"
    assert run(["quickstart", "--workdir", str(work), *TINY]) == 0
    out = capsys.readouterr().out
    run_dir = work / "runs" / "ivanet-tiny-synthetic"
    assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "recipe.toml").is_file()
    result = json.loads((run_dir / "eval" / "val.json").read_text())
    for name in ("miou", "voc07"):
        assert 0.0 <= result["metrics"][name] <= 1.0
    preds = sorted((run_dir / "viz" / "predictions").glob("*.png"))
    assert len(preds) == 2
    f, band = titled_geometry(64, 256)  # 64x128 images enlarged 4x for readable captions
    with Image.open(preds[0]) as img:
        assert img.size[0] == 2 * f * 128 + 4 and img.size[1] > band + f * 64  # ground truth | prediction, legend
    assert {p.name for p in (run_dir / "plots").glob("*.png")} >= {"losses.png", "lr.png"}
    assert "quickstart result on the synthetic val split" in out and "mIoU" in out

    # an interrupted run (last.pt half way) resumes exactly where it stopped
    import torch

    last = run_dir / "checkpoints" / "last.pt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    state["iteration"] = 2
    torch.save(state, last)
    assert run(["quickstart", "--workdir", str(work), *TINY]) == 0
    assert "resuming the interrupted run" in capsys.readouterr().out
    assert torch.load(last, map_location="cpu", weights_only=True)["iteration"] == 4

    # a run with the same settings reuses the trained model instead of training again
    stamp = last.stat().st_mtime_ns
    assert run(["quickstart", "--workdir", str(work), *TINY, "--num-viz", "1"]) == 0
    assert "reusing the trained run" in capsys.readouterr().out
    assert last.stat().st_mtime_ns == stamp

    # other training settings over the same run need --force; nothing is touched
    assert run(["quickstart", "--workdir", str(work), *TINY, "--set", "train.lr=0.01"]) == 2
    assert "--force" in capsys.readouterr().err
    assert last.stat().st_mtime_ns == stamp


def test_quickstart_evaluates_only_what_the_model_gives(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A segmentation-only family gets mIoU (and PQ, the panoptic merge of its semantic map) and no detection
    metric (it used to fail on voc07)."""
    work = tmp_path / "qs"
    assert run(["quickstart", "--workdir", str(work), *TINY, "--recipe", "ladderdensenet-tiny-synthetic"]) == 0
    out = capsys.readouterr().out
    result = json.loads((work / "runs" / "ladderdensenet-tiny-synthetic" / "eval" / "val.json").read_text())
    assert list(result["metrics"]) == ["miou", "pq"]
    assert "mIoU" in out and "mAP@0.5" not in out and ">= 0.70" in out
    timing = json.loads((work / "runs" / "ladderdensenet-tiny-synthetic" / "timing.json").read_text())
    assert timing["iterations"] == 4 and timing["cpu_s"] > 0 and timing["wall_s"] > 0


def test_quickstart_all_trains_each_tiny_recipe_and_prints_one_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mtlcli.cli.quickstart as qs

    assert {
        "ivanet-tiny-synthetic",
        "ssd300-tiny-synthetic",
        "ladderdensenet-tiny-synthetic",
        "imtl-tiny-synthetic",
        "datnet-tiny-synthetic",
        "safpn-ejhead-tiny-synthetic",
    } <= set(qs.tiny_recipes())
    monkeypatch.setattr(qs, "tiny_recipes", lambda: ["ivanet-tiny-synthetic", "ladderdensenet-tiny-synthetic"])
    work = tmp_path / "qs"
    assert run(["quickstart", "--workdir", str(work), *TINY, "--all"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("quickstart --all") :]
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 80  # the whole table in an 80-column terminal
    rows_shown = {
        line.split()[0]: line.split()
        for line in lines
        if line.split() and line.split()[0] in ("ivanet", "ladderdensenet")
    }
    assert set(rows_shown) == {"ivanet", "ladderdensenet"} and "CPU" in table and "mAP50" in table
    assert rows_shown["ladderdensenet"][-1] in ("met", "not")  # one floors verdict per row
    rows = json.loads((work / "learning.json").read_text())
    assert [r["recipe"] for r in rows] == ["ivanet-tiny-synthetic", "ladderdensenet-tiny-synthetic"]
    assert set(rows[0]["metrics"]) == {"miou", "voc07", "pq"} and set(rows[1]["metrics"]) == {"miou", "pq"}
    assert "PQ" in table
    assert rows[1]["floors"] == {"miou": 0.70}

    assert run(["quickstart", "--workdir", str(work), *TINY, "--all", "--recipe", "ivanet-tiny-synthetic"]) == 2
    assert "not both" in capsys.readouterr().err


def test_supported_metrics_follow_the_outputs() -> None:
    from mtlcli.cli.quickstart import supported_metrics

    assert supported_metrics({"sem_seg": 0}) == ["miou", "pq"]
    assert supported_metrics({"boxes": 0, "scores": 0, "labels": 0}) == ["voc07"]
    assert supported_metrics({"boxes": 0, "masks": 0, "sem_seg": 0}) == [
        "miou",
        "voc07",
        "coco-bbox",
        "coco-segm",
        "pq",
    ]
