"""`mtl benchmark` on tiny models: every field present and positive, JSON round trip, reference rows,
and clear exit-2 errors."""

import json

import pytest

from mtlcli.cli.main import main

FIELDS = ["params", "gflops", "full_median_ms", "full_p90_ms", "full_min_ms", "images_per_s", "peak_mem_mb"]


def run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_tiny_recipe_with_reference_and_train(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code, stdout, _ = run(
        [
            "benchmark",
            "--recipe",
            "ladderdensenet-tiny-synthetic",
            "--reference",
            "tv:fcn_resnet50",
            "--size",
            "64x96",
            "--iterations",
            "2",
            "--warmup",
            "1",
            "--train",
            "--out",
            str(out),
            "--score-threshold",
            "0",
        ],
        capsys,
    )
    assert code in (0, None)
    result = json.loads(out.read_text())
    assert result["environment"]["device"] == "cpu" and result["environment"]["threads"] >= 1
    assert result["settings"]["score_threshold"] == 0.0
    rows = {r["name"]: r for r in result["results"]}
    assert set(rows) == {"ladderdensenet-tiny-synthetic", "tv:fcn_resnet50"}
    ours = rows["ladderdensenet-tiny-synthetic"]
    for key in FIELDS + ["net_median_ms", "post_ratio", "train_median_ms", "train_images_per_s"]:
        assert key in ours, key
        assert ours[key] >= 0 if key == "peak_mem_mb" else ours[key] > 0, key
    assert ours["size"] == [64, 96] and ours["batch"] == 1
    assert ours["full_min_ms"] <= ours["full_median_ms"] <= ours["full_p90_ms"]
    ref = rows["tv:fcn_resnet50"]
    assert ref["kind"] == "torchvision" and ref["params"] > 30e6 and ref["gflops"] > 0
    assert "ladderdensenet-tiny-synthetic" in stdout and "tv:fcn_resnet50" in stdout
    # the JSON round-trips: what was written reads back to the same structure
    assert json.loads(json.dumps(result)) == result


def test_markdown_table(capsys):
    code, stdout, _ = run(
        [
            "benchmark",
            "--recipe",
            "ladderdensenet-tiny-synthetic",
            "--size",
            "64x64",
            "--iterations",
            "1",
            "--warmup",
            "0",
            "--markdown",
        ],
        capsys,
    )
    assert code in (0, None)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("|")]
    assert lines[0].startswith("| model |") and "ladderdensenet-tiny-synthetic" in lines[2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--recipe", "no-such-recipe"], "no-such-recipe"),
        (["--recipe", "ladderdensenet-tiny-synthetic", "--set", "model.no_such_arg=1"], "no_such_arg"),
        (["--recipe", "ladderdensenet-tiny-synthetic", "--size", "12x"], "--size"),
        (["--recipe", "ladderdensenet-tiny-synthetic", "--size", "0x64"], "--size"),
        (["--preset", "no-such-table"], "preset"),
        (["--reference", "tv:nothing"], "reference"),
        ([], "nothing to benchmark"),
    ],
)
def test_bad_input_exits_2(args, message, capsys):
    code, _, err = run(["benchmark", *args], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_existing_out_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "mine.json"
    out.write_text("keep me")
    code, _, err = run(["benchmark", "--recipe", "ladderdensenet-tiny-synthetic", "--out", str(out)], capsys)
    assert code == 2 and "--force" in err
    assert out.read_text() == "keep me"
