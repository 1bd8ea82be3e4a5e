"""The training loop on the synthetic prepared dataset with the tiny model: learning, run layout,
evaluation and best.pt, stages, failure handling, and the `mtl train` command."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch

from mtlcli.cli.main import main
from mtlcli.engine.checkpoint import load_checkpoint, load_for_eval
from mtlcli.engine.train import TrainingDiverged, build, seed_everything, train, with_class_counts
from mtlcli.errors import UserError
from mtlcli.recipes import load_recipe
from tests.engine.tiny_model import (  # noqa: F401 (fixture)
    TINY_RECIPE,
    tiny_recipe,
    tiny_registered,
    train_losses,
    write_recipe,
)

pytestmark = pytest.mark.usefixtures("tiny_registered")


def test_loss_decreases_and_the_run_directory_is_complete(tmp_path, synthetic_prepared):
    recipe = tiny_recipe(
        tmp_path,
        synthetic_prepared,
        "train.iterations=30",
        "train.lr=0.1",
        "train.log_interval=5",
        "train.checkpoint_interval=10",
        "eval.metrics=miou,voc07",
        "eval.interval=15",
        "eval.best_metric=miou",
        "eval.batch_size=3",
    )
    run = tmp_path / "run"
    result = train(recipe, run, progress=False)

    logged = train_losses(run)
    assert [r["iteration"] for r in logged] == [5, 10, 15, 20, 25, 30]
    assert logged[-1]["loss"] < 0.7 * logged[0]["loss"]
    assert set(logged[0]["losses"]) == {"loss_det", "loss_seg"}
    for key in ("lr", "images_per_s", "data_wait", "memory_mb"):
        assert logged[0][key] > 0 or key == "data_wait"
    assert 0.0 <= logged[0]["data_wait"] <= 1.0

    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["type"] == "eval"]
    assert [r["iteration"] for r in evals] == [15, 30]
    assert set(evals[0]["metrics"]) == {"miou", "voc07"}
    assert result["metrics"] == evals[-1]["metrics"]
    best = max(evals, key=lambda r: r["metrics"]["miou"])
    assert result["best"] == {"metric": "miou", "value": best["metrics"]["miou"], "iteration": best["iteration"]}

    saved = tomllib.loads((run / "recipe.toml").read_text())
    assert saved["model"]["num_det_classes"] == 8 and saved["model"]["num_seg_classes"] == 19  # from the dataset
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["iteration"] == 30 and last["recipe"] == saved
    assert load_checkpoint(run / "checkpoints" / "best.pt")["iteration"] == best["iteration"]
    assert not list((run / "checkpoints").glob(".*"))  # no temporary files left by the atomic writes

    model, rec, root = load_for_eval(run=run)
    assert not model.training and rec == saved and root == synthetic_prepared
    best_state = load_checkpoint(run / "checkpoints" / "best.pt")["model"]
    assert all(torch.equal(v, best_state[k]) for k, v in model.state_dict().items())


def test_stages_freeze_what_they_name_and_weigh_the_losses(tmp_path, synthetic_prepared):
    stage1 = """
[[train.stages]]
name = "seg"
iterations = 3
lr = 0.05
loss_weights = { loss_det = 0.0 }
freeze = ["det_head.*"]
"""
    stage2 = """
[[train.stages]]
name = "det"
iterations = 3
lr = 0.05
loss_weights = { loss_seg = 0.0 }
freeze = ["backbone.*", "seg_head.*"]
"""
    first = load_recipe(write_recipe(tmp_path, TINY_RECIPE + stage1, "one.toml"), [f"data.root={synthetic_prepared}"])
    both = load_recipe(
        write_recipe(tmp_path, TINY_RECIPE + stage1 + stage2, "two.toml"), [f"data.root={synthetic_prepared}"]
    )
    run = tmp_path / "run"
    train(first, run, progress=False)
    after1 = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    train(both, run, resume=True, progress=False)  # the same run, continued into its second stage
    after2 = load_checkpoint(run / "checkpoints" / "last.pt")["model"]

    seed_everything(first["train"]["seed"])  # the initial weights, as train() builds them
    from mtlcli.data.dataset import PreparedDataset

    init = build(with_class_counts(first, PreparedDataset(synthetic_prepared, "train"))).state_dict()
    changed = lambda a, b, prefix: any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))  # noqa: E731
    assert not changed(init, after1, "det_head.") and changed(init, after1, "backbone.")
    assert changed(init, after1, "seg_head.")
    assert not changed(after1, after2, "backbone.") and not changed(after1, after2, "seg_head.")
    assert changed(after1, after2, "det_head.")

    logged = train_losses(run)
    assert [r["stage"] for r in logged] == ["seg"] * 3 + ["det"] * 3
    assert all(r["losses"]["loss_det"] == 0.0 for r in logged[:3])
    assert all(r["losses"]["loss_seg"] == 0.0 for r in logged[3:])


def test_gradient_accumulation_matches_the_full_batch(tmp_path, synthetic_prepared):
    runs = {}
    for acc in (1, 2):
        recipe = tiny_recipe(
            tmp_path, synthetic_prepared, "train.iterations=3", f"train.accumulate={acc}", "train.grad_clip=1.0"
        )
        train(recipe, tmp_path / f"acc{acc}", progress=False)
        runs[acc] = load_checkpoint(tmp_path / f"acc{acc}" / "checkpoints" / "last.pt")["model"]
    for k in runs[1]:
        torch.testing.assert_close(runs[1][k], runs[2][k], rtol=1e-5, atol=1e-6)


def test_non_finite_loss_stops_with_iteration_terms_and_last_good_checkpoint(tmp_path, synthetic_prepared):
    recipe = tiny_recipe(
        tmp_path, synthetic_prepared, "train.checkpoint_interval=2", "model.fail_at=3", "model.failure=nan"
    )
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as info:
        train(recipe, run, progress=False)
    message = str(info.value)
    assert "non-finite loss at iteration 3 (loss_det=nan, loss_seg=" in message
    assert f"last good checkpoint: {run / 'checkpoints' / 'last.pt'} (iteration 2)" in message
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in last["model"].values())


def test_out_of_memory_names_batch_and_input_size(tmp_path, synthetic_prepared):
    recipe = tiny_recipe(tmp_path, synthetic_prepared, "model.fail_at=2", "model.failure=oom")
    with pytest.raises(
        UserError,
        match=r"out of memory on cpu at iteration 2 with 4 image\(s\) per process .*"
        r"train.batch_size = 4.* input size 32x32",
    ):
        train(recipe, tmp_path / "run", progress=False)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "train.loss_weights.loss_sgm=0.5",
            "loss_weights name(s) loss_sgm that the model does not return; its losses: loss_det, loss_seg",
        ),
        ("train.batch_size=3", "train.batch_size = 3 is not divisible by 1 process(es) x train.accumulate = 2"),
    ],
)
def test_recipe_mistakes_found_at_the_start_of_training(tmp_path, synthetic_prepared, override, message):
    recipe = tiny_recipe(
        tmp_path, synthetic_prepared, override, "train.accumulate=2" if "batch" in override else "train.accumulate=1"
    )
    with pytest.raises(UserError) as info:
        train(recipe, tmp_path / "run", progress=False)
    assert message in str(info.value)


def test_missing_prepared_dataset_says_how_to_prepare_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MTL_DATA", str(tmp_path / "nowhere"))
    recipe = load_recipe(write_recipe(tmp_path))
    with pytest.raises(
        UserError,
        match=r"no prepared dataset at .*nowhere/synthetic — run `mtl prepare synthetic "
        r"--out",
    ):
        train(recipe, tmp_path / "run", progress=False)


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code


def test_cli_train_runs_refuses_to_overwrite_and_resumes(tmp_path, synthetic_prepared, capsys, monkeypatch):
    recipe = write_recipe(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = [
        "train",
        "--recipe",
        str(recipe),
        "--data",
        str(synthetic_prepared),
        "--quiet",
        "--set",
        "train.iterations=2",
    ]
    assert run_cli(args) == 0
    assert run_cli(args) == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == ["exp1", "exp2"]

    run = tmp_path / "runs" / "tiny" / "exp1"
    capsys.readouterr()
    assert run_cli([*args, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {run} already holds files — continue that run with --resume") and "\n" not in err

    assert run_cli(["train", "--out", str(run), "--resume", "--quiet", "--set", "train.iterations=4"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 4
    assert [r["iteration"] for r in train_losses(run)] == [1, 2, 3, 4]

    assert run_cli([*args, "--out", str(run), "--force"]) == 0
    assert [r["iteration"] for r in train_losses(run)] == [1, 2]

    capsys.readouterr()
    assert run_cli(["train", "--recipe", str(recipe), "--resume", "--quiet"]) == 2
    assert "--resume needs --out RUN" in capsys.readouterr().err


def test_amp_is_a_no_op_on_cpu_and_channels_last_trains_the_same(tmp_path, synthetic_prepared):
    runs = {}
    for name, extra in (
        ("plain", []),
        ("bf16", ["train.amp=bf16"]),
        ("fp16", ["train.amp=fp16"]),
        ("cl", ["train.channels_last=true", "train.deterministic=true"]),
    ):
        train(
            tiny_recipe(tmp_path, synthetic_prepared, "train.iterations=3", *extra),
            tmp_path / name,
            device="cpu",
            progress=False,
        )
        runs[name] = [r["losses"] for r in train_losses(tmp_path / name)]
    assert runs["bf16"] == runs["plain"] and runs["fp16"] == runs["plain"]
    for a, b in zip(runs["cl"], runs["plain"], strict=True):
        assert a == pytest.approx(b, rel=1e-4)
    assert not torch.are_deterministic_algorithms_enabled()  # the process-wide switch is given back


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed precision runs on CUDA only")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_on_cuda_learns_and_saves_the_scaler(tmp_path, synthetic_prepared, amp):
    recipe = tiny_recipe(
        tmp_path, synthetic_prepared, "train.iterations=20", "train.lr=0.1", "train.log_interval=5", f"train.amp={amp}"
    )
    train(recipe, tmp_path / "run", device="cuda", progress=False)
    logged = train_losses(tmp_path / "run")
    assert logged[-1]["loss"] < logged[0]["loss"]
    scaler = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["scaler"]
    assert (amp == "fp16") == bool(scaler)  # only fp16 needs loss scaling


def test_cli_ctrl_c_saves_last_and_exits_130(tmp_path, synthetic_prepared, capsys):
    run = tmp_path / "run"
    code = run_cli(
        [
            "train",
            "--recipe",
            str(write_recipe(tmp_path)),
            "--data",
            str(synthetic_prepared),
            "--out",
            str(run),
            "--quiet",
            "--set",
            "model.fail_at=3",
            "--set",
            "model.failure=interrupt",
        ]
    )
    assert code == 130
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 2


def test_corrupt_or_missing_checkpoint_is_a_user_error(tmp_path):
    bad = tmp_path / "checkpoints" / "last.pt"
    bad.parent.mkdir()
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="cannot be read: it is a text file, not an mtl checkpoint"):
        load_for_eval(checkpoint=bad)
    bad.write_bytes(b"\x80\x02 a pickle cut short")  # looks like a legacy torch.save file
    with pytest.raises(UserError, match="cannot be read .* corrupt or not an mtl checkpoint"):
        load_for_eval(checkpoint=bad)
    with pytest.raises(UserError, match="has no checkpoints/best.pt or checkpoints/last.pt"):
        load_for_eval(run=tmp_path / "checkpoints")


def test_resume_without_a_checkpoint_exits_2(tmp_path, capsys):
    assert (
        run_cli(["train", "--recipe", str(write_recipe(tmp_path)), "--out", str(tmp_path / "empty"), "--resume"]) == 2
    )
    assert "has no checkpoints/last.pt to resume from — drop --resume" in capsys.readouterr().err


class FakeSummaryWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter: makes its folder, keeps the scalars."""

    made: list[FakeSummaryWriter] = []

    def __init__(self, log_dir: str, purge_step: int | None = None) -> None:
        Path(log_dir).mkdir(parents=True)
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False
        FakeSummaryWriter.made.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def close(self) -> None:
        self.closed = True


def test_tensorboard_only_when_asked(tmp_path, synthetic_prepared, capsys, monkeypatch):
    """metrics.jsonl always; RUN/tensorboard/ only with --tensorboard (or train.tensorboard = true), and without
    the tensorboard package that is one line and exit 2 before any folder is made."""
    import sys
    import types

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeSummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)  # installed or not, the test sees the calls
    monkeypatch.setattr(FakeSummaryWriter, "made", [])
    recipe = write_recipe(tmp_path)
    args = [
        "train",
        "--recipe",
        str(recipe),
        "--data",
        str(synthetic_prepared),
        "--quiet",
        "--device",
        "cpu",
        "--set",
        "train.iterations=2",
    ]
    assert run_cli([*args, "--out", str(tmp_path / "plain")]) == 0
    assert (tmp_path / "plain" / "metrics.jsonl").is_file() and not (tmp_path / "plain" / "tensorboard").exists()
    assert FakeSummaryWriter.made == []
    assert run_cli([*args, "--out", str(tmp_path / "on"), "--tensorboard"]) == 0
    (writer,) = FakeSummaryWriter.made
    assert (tmp_path / "on" / "tensorboard").is_dir() and writer.closed
    logged = train_losses(tmp_path / "on")
    assert (
        [(step, value) for tag, value, step in writer.scalars if tag == "train/loss"]
        == [(r["iteration"], r["loss"]) for r in logged]
        == [(1, logged[0]["loss"]), (2, logged[1]["loss"])]
    )
    capsys.readouterr()

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    for asked in (["--tensorboard"], ["--set", "train.tensorboard=true"]):
        assert run_cli([*args, "--out", str(tmp_path / "tb"), *asked]) == 2
        captured = capsys.readouterr()
        lines = [ln for ln in captured.err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "pip install tensorboard" in lines[0], lines
        assert "Traceback" not in captured.err and not (tmp_path / "tb").exists()
    with pytest.raises(UserError, match="pip install tensorboard"):  # the engine refuses it the same way
        train(tiny_recipe(tmp_path, synthetic_prepared, "train.tensorboard=true"), tmp_path / "api", progress=False)
    assert not (tmp_path / "api").exists()


def test_tensorboard_events_hold_the_logged_scalars(tmp_path, synthetic_prepared):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(
        tiny_recipe(
            tmp_path, synthetic_prepared, "train.iterations=4", "train.log_interval=2", "train.tensorboard=true"
        ),
        run,
        progress=False,
    )
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [r["iteration"] for r in train_losses(run)] == [2, 4]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([r["loss"] for r in train_losses(run)])
