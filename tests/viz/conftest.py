"""Trained-for-a-few-steps runs for the `mtl viz` tests, built once per session on the synthetic city.

`seg_run`  LadderDenseNet (tiny recipe): segmentation only, 64x128 input — features, adversarial, confusion
`det_run`  IvaNet (tiny recipe): boxes + segmentation — prediction overlays with captions
Both are read-only for tests: write outputs with --out into tmp_path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlcli.cli.main import main


def _train(name: str, data: Path, run: Path) -> Path:
    from mtlcli.engine.train import train
    from mtlcli.recipes import load_recipe

    recipe = load_recipe(
        name,
        [
            f"data.root={data}",
            "train.iterations=4",
            "train.batch_size=2",
            "train.log_interval=2",
            "train.checkpoint_interval=4",
            "eval.interval=2",
            "eval.batch_size=3",
        ],
    )
    train(recipe, run, progress=False)
    return run


@pytest.fixture(scope="session")
def seg_run(synthetic_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train("ladderdensenet-tiny-synthetic", synthetic_prepared, tmp_path_factory.mktemp("viz") / "seg_run")


@pytest.fixture(scope="session")
def det_run(synthetic_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train("ivanet-tiny-synthetic", synthetic_prepared, tmp_path_factory.mktemp("viz") / "det_run")


def run_cli(argv: list[str]) -> int:
    """`mtl ARGV` in-process; the exit status (0 when it returns normally)."""
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one non-empty stderr line of a failed command."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]
