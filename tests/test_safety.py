"""The guards of mtlcli.safety, mtlcli.engine.rundir, mtlcli.engine.compat, mtlcli.recipe_checks and
mtlcli.data.unreadable, one class of fault each (the commands are walked in tests/cli/test_faults.py)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
import torch

from mtlcli.data.unreadable import SkipUnreadable
from mtlcli.engine.compat import check_label_set, check_resume_model, check_state_shapes
from mtlcli.engine.rundir import LOCK_NAME, RunLock, check_unlocked, clear_run
from mtlcli.errors import UserError
from mtlcli.recipe_checks import check_model_ranges, scale_stages
from mtlcli.safety import (
    atomic_write_text,
    clean_orphans,
    protected_owner,
    refuse_protected_output,
    write_error_line,
)


def _dataset(root):
    (root / "val" / "semantic").mkdir(parents=True)
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "x",
                "source": "s",
                "splits": ["val"],
                "det_classes": ["car"],
                "seg_classes": ["road"],
                "palette": [],
            }
        )
    )
    return root


def test_outputs_inside_a_prepared_dataset_or_run_checkpoints_are_refused_symlinks_resolved(tmp_path):
    data = _dataset(tmp_path / "data")
    for inside in (data, data / "val", data / "val" / "semantic", data / "val" / "new" / "deeper", data / "x.json"):
        with pytest.raises(UserError, match="prepared dataset .* only `mtl prepare` writes"):
            refuse_protected_output(inside, "--out")
    link = tmp_path / "innocent"
    link.symlink_to(data / "val")
    with pytest.raises(UserError, match="--save-predictions"):
        refuse_protected_output(link / "semantic", "--save-predictions")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "recipe.toml").write_text("")
    with pytest.raises(UserError, match="run checkpoints .* only `mtl train` writes"):
        refuse_protected_output(run / "checkpoints" / "preds", "--out")
    # beside them is fine, and so is a folder whose dataset.json is not mtl's
    refuse_protected_output(tmp_path / "elsewhere", "--out")
    refuse_protected_output(run / "viz", "--out")
    other = tmp_path / "other"
    other.mkdir()
    (other / "dataset.json").write_text('{"some": "tool"}')
    assert protected_owner(other / "out") is None


def test_atomic_writes_keep_the_umask_fsync_and_leave_no_temporary_file(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600
    assert synced and not list(tmp_path.glob(".*"))


def test_a_failed_atomic_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "keep.json"
    target.write_text("old")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and not list(tmp_path.glob(".*"))


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.EROFS, "read-only file system"),
        (errno.ENOSPC, "no space left"),
        (errno.ENAMETOOLONG, "name too long"),
        (errno.ENOTDIR, "not a folder"),
        (errno.EDQUOT, "quota"),
        (errno.EIO, "input/output error"),
    ],
)
def test_every_oserror_is_one_line_naming_the_file(code, words):
    line = write_error_line(OSError(code, os.strerror(code), "/some/file"))
    assert line.startswith("error: /some/file: ") and words in line and "\n" not in line


def test_run_lock_refuses_a_live_holder_takes_over_a_stale_one_and_is_released(tmp_path):
    run = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.mkdir()
        (run / LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename, "started": "t"}))
        with pytest.raises(UserError, match=f"locked by process {sleeper.pid}"):
            RunLock(run).acquire()
        with pytest.raises(UserError, match="cannot --force on"):
            check_unlocked(run, "--force on")
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder is gone: its lock is stale and taken over; leaving the block removes it
    with RunLock(run) as lock:
        assert lock.took_over["pid"] == sleeper.pid
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
        with RunLock(run):  # re-entrant: the command holds it, then the engine
            pass
        assert (run / LOCK_NAME).exists()
    assert not (run / LOCK_NAME).exists()


def test_a_lock_of_another_host_is_refused_not_guessed(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "t"}))
    with pytest.raises(UserError, match="on elsewhere"):
        RunLock(tmp_path).acquire()


def test_clear_run_removes_only_what_mtl_wrote(tmp_path):
    run = tmp_path / "run"
    for rel in (
        "recipe.toml",
        "metrics.jsonl",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "checkpoints/.last.pt.abc.tmp",
        "eval/val.json",
        "viz/predictions/a.png",
        "tensorboard/events.out.tfevents.1",
        "checkpoints/my_notes.txt",
        "plots/keep.pdf",
    ):
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text("x")
    kept = clear_run(run)
    assert kept == [run / "checkpoints" / "my_notes.txt", run / "plots" / "keep.pdf"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "plots"]


def test_clean_orphans_removes_temporary_files_only(tmp_path):
    (tmp_path / ".last.pt.x1.tmp").write_text("half")
    (tmp_path / "last.pt").write_text("whole")
    assert [p.name for p in clean_orphans(tmp_path)] == [".last.pt.x1.tmp"]
    assert (tmp_path / "last.pt").exists()


@pytest.mark.parametrize("size", [[64], [0, 0], [100000, 100000], [64, 64, 64], 8])
def test_absurd_input_sizes_are_refused_before_building(size):
    with pytest.raises(UserError, match="model.input_size"):
        check_model_ranges({"name": "ivanet", "input_size": size})


@pytest.mark.parametrize(
    "key, value",
    [("num_det_classes", 0), ("score_thresh", 1.5), ("width", -4), ("seg_weight", -1.0), ("nms_thresh", float("nan"))],
)
def test_model_values_out_of_range_are_refused(key, value):
    with pytest.raises(UserError, match=f"model.{key}"):
        check_model_ranges({"name": "ivanet", key: value})


def test_scaling_stages_keeps_proportions_and_the_exact_total():
    train = {
        "iterations": 160,
        "stages": [{"iterations": 40}, {"iterations": 40}, {"iterations": 40}, {"iterations": 40}],
    }
    scale_stages(train, 2 * 4 + 2)
    assert [s["iterations"] for s in train["stages"]] == [2, 3, 3, 2] and train["iterations"] == 10
    scale_stages(train, 1000)
    assert [s["iterations"] for s in train["stages"]] == [200, 300, 300, 200]
    scale_stages(train, 4)
    assert [s["iterations"] for s in train["stages"]] == [1, 1, 1, 1]
    with pytest.raises(UserError, match="cannot cover the recipe's 4 stages"):
        scale_stages(train, 3)


class _Data:
    det_classes = ["car", "person"]
    seg_classes = ["road", "car", "sky"]


def test_label_set_checks_name_both_sides():
    model = {"name": "m", "num_det_classes": 2, "num_seg_classes": 3}
    check_label_set(
        {"det_classes": ["car", "person"], "seg_classes": ["road", "car", "sky"]},
        model,
        _Data(),
        checkpoint="c",
        data="d",
        action="eval",
    )
    with pytest.raises(
        UserError,
        match=r"c was trained on 3 \(road, car, grass\) segmentation classes but d has 3 "
        r"\(road, car, sky\)",
    ):
        check_label_set(
            {"det_classes": ["car", "person"], "seg_classes": ["road", "car", "grass"]},
            model,
            _Data(),
            checkpoint="c",
            data="d",
            action="eval",
        )
    with pytest.raises(UserError, match="trained on 19 segmentation classes but d has 3"):  # an older checkpoint
        check_label_set(None, {**model, "num_seg_classes": 19}, _Data(), checkpoint="c", data="d", action="eval")
    check_label_set(None, {"name": "det_only", "num_det_classes": 2}, _Data(), checkpoint="c", data="d", action="eval")


def test_resume_refuses_another_model_and_changes_that_break_the_weights():
    with pytest.raises(UserError, match="model.name is 'a' in c but 'b' now"):
        check_resume_model({"name": "a"}, {"name": "b"}, "c", fits=True)
    with pytest.raises(UserError, match="model.width is 8 in c but 4 now"):
        check_resume_model({"name": "a", "width": 8}, {"name": "a", "width": 4}, "c", fits=False)
    assert check_resume_model({"name": "a", "t": 0.1}, {"name": "a", "t": 0.2}, "c", fits=True) == [("t", 0.1, 0.2)]


def test_state_shape_mismatch_is_one_line():
    model = torch.nn.Linear(3, 4)
    with pytest.raises(UserError, match=r"weight is \[5, 3\] in the checkpoint but \[4, 3\] in the model"):
        check_state_shapes(
            model, {"weight": torch.zeros(5, 3), "bias": torch.zeros(5)}, "c.pt", {"name": "lin", "num_seg_classes": 4}
        )


class _Flaky(torch.utils.data.Dataset):
    det_classes = ["car"]

    def __init__(self, bad):
        self.bad, self.reads = bad, []

    def __len__(self):
        return 4

    def image_info(self, i):
        return {"file_name": f"img{i}.png"}

    def __getitem__(self, i):
        self.reads.append(i)
        if i in self.bad:
            raise UserError(f"img{i}.png: cannot read image (OSError: broken data stream)")
        return i


def test_unreadable_training_samples_are_named_once_and_replaced(capsys):
    ds = SkipUnreadable(_Flaky({1}))
    assert [ds[i] for i in range(4)] + [ds[1]] == [0, 2, 2, 3, 2]
    err = capsys.readouterr().err
    assert err.count("warning: skipping unreadable img1.png") == 1 and "broken data stream" in err
    assert ds.dataset.reads.count(1) == 1  # not read again
    assert ds.det_classes == ["car"]
    ds.targets = frozenset({"semantic"})  # a setting reaches the wrapped dataset
    assert ds.dataset.targets == frozenset({"semantic"}) and "targets" not in vars(ds)
    with pytest.raises(UserError, match="cannot read"):
        SkipUnreadable(_Flaky({0, 1, 2, 3}))[0]


def test_prepare_cleans_orphaned_temporary_files(tmp_path):
    from mtlcli.data.prepared import check_out_dir

    (tmp_path / "out" / "train").mkdir(parents=True)
    (tmp_path / "out" / ".dataset.json.x.tmp").write_text("half")
    (tmp_path / "out" / "train" / ".instances.json.y.tmp").write_text("half")
    (tmp_path / "out" / "train" / "keep.json").write_text("{}")
    check_out_dir(tmp_path / "out", force=True)
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.is_file()] == ["keep.json"]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_check_image_finds_files_cut_short_cheaply(tmp_path, fmt):
    import numpy as np
    from PIL import Image

    from mtlcli.data.integrity import check_image

    path = tmp_path / f"x.{fmt.lower()}"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(path, fmt)
    assert check_image(path) == (96, 64) and check_image(path, verify=True) == (96, 64)
    data = path.read_bytes()
    path.write_bytes(data + b"\0" * 100)  # bytes some tools append after the end marker are tolerated
    assert check_image(path) == (96, 64)
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(OSError, match="truncated"):
        check_image(path)
    with pytest.raises((OSError, SyntaxError, ValueError)):
        check_image(path, verify=True)


def test_resume_with_another_label_map_names_both_sides():
    from mtlcli.engine.compat import check_resume

    state = {"recipe": {"model": {"name": "m"}, "data": {"label_map": {}}}, "model": {}}
    recipe = {"model": {"name": "m"}, "data": {"label_map": {"seg": {"road": "flat", "sidewalk": "flat"}}}}
    with pytest.raises(UserError, match=r"data.label_map is \{none\} in c but \{seg: 2 entries\} now"):
        check_resume(state, recipe, _Data(), "c", "d")
