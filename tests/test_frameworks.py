"""Real tiny framework jobs under `tlog run`, compared with the framework's own record of the same run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from conftest import Runner, clean_env, script


def _metrics(exp: Path) -> list[dict[str, str]]:
    with open(exp / "training_metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def hf_accum1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Runner, list[dict], list[dict]]:
    """One tlog run of the tiny HF Trainer job (8 steps, no accumulation), shared by the HF tests."""
    runner = Runner(tmp_path_factory.mktemp("hf1"))
    out = runner.cwd / "out"
    r = runner.run("run", "--name", "hf", "--log-every", "1", script("hf_trainer.py"), "--out", str(out),
                   "--accum", "1", env=clean_env(HF_HUB_OFFLINE="1"), timeout=180)
    assert r.returncode == 0, r.stderr
    history = json.loads((out / "log_history.json").read_text())
    return runner, _metrics(runner.exp("hf")), [h for h in history if "loss" in h]


def test_hf_trainer_loss_and_lr_match_log_history(hf_accum1: tuple[Runner, list[dict], list[dict]]) -> None:
    _, rows, history = hf_accum1
    assert len(history) == 8
    assert [int(r["step"]) for r in rows] == [h["step"] for h in history]
    for row, h in zip(rows, history, strict=True):
        assert math.isclose(float(row["loss"]), h["loss"], rel_tol=1e-6), (row, h)
        assert math.isclose(float(row["learning_rate"]), h["learning_rate"], rel_tol=1e-9), (row, h)
