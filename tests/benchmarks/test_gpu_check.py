"""The GPU check's CPU variant: the same code at tiny sizes, so that the script cannot rot between GPU
sessions (it writes its JSON and Markdown, every check passes, every section ran)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_variant_runs_every_section(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the benchmark section runs `python -m mtlcli`
    gpu_check = load_gpu_check()
    status = gpu_check.main(["--cpu", "--out", str(tmp_path), "--iterations", "2", "--reference-iterations", "1"])
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert status == 0 and result["failed"] == []
    family = result["families"]["ladderdensenet-tiny-synthetic"]
    assert family["checks"] == {"finite": True, "falling": True, "metrics_match_cpu": True}
    assert (
        "miou" in family["device"]["metrics"] and "ladderdensenet-tiny-synthetic (torch.compile)" in result["families"]
    )
    assert [r["precision"] for r in result["benchmark"]] == ["fp32"] and result["benchmark"][0]["images_per_s"] > 0
    assert set(result["feed"]) == {"1"} and all(0 <= r["data_wait"] <= 1 for r in result["feed"].values())
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| ladderdensenet-tiny-synthetic |" in table and "loader workers" in table


def test_metric_magnitudes_and_loss_checks():
    gpu_check = load_gpu_check()
    assert gpu_check.same_magnitude(0.31, 0.05) and not gpu_check.same_magnitude(0.5, 0.01)
    assert gpu_check.same_magnitude(0.001, 0.0) and not gpu_check.same_magnitude(float("nan"), 0.3)
    assert gpu_check.loss_checks([3.0, 2.0]) == {"finite": True, "falling": True}
    assert gpu_check.loss_checks([3.0, float("inf")])["finite"] is False
    assert gpu_check.loss_checks([2.0, 2.5])["falling"] is False
