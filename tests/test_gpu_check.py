"""bench/gpu_check.py before it meets a GPU: on this machine it says there is no CUDA and runs nothing; its
``--cpu-selftest`` runs the real children (plain and under ``tlog run``) on cpu and writes a well-formed report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_env

GPU_CHECK = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda(), reason="this test is for machines without CUDA")
def test_without_cuda_it_says_so_in_one_line_and_runs_nothing(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    res = subprocess.run([sys.executable, str(GPU_CHECK), "--out", str(out)], capture_output=True, text=True,
                         env=clean_env(), timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["gpu_check: no CUDA device here (torch.cuda.is_available() is False); "
                                       "nothing run."]
    assert not out.exists()


def test_cpu_selftest_runs_the_children_and_writes_a_well_formed_report(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    res = subprocess.run([sys.executable, str(GPU_CHECK), "--cpu-selftest", "--out", str(out)], capture_output=True,
                         text=True, env=clean_env(), timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"report: {out}" in res.stdout and "SELFTEST DONE" in res.stdout
    report = json.loads(out.read_text())
    assert report["selftest"] is True and isinstance(report["pass"], bool)
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == ["memory truth", "zero syncs", "overhead", "device-side assert"]
    for check in checks.values():
        assert check["figures"] and all({"what", "value", "budget", "ok"} <= set(f) for f in check["figures"])
    # What the cpu can prove: the tlog runs and the parsing of tlog's files are real.
    assert checks["memory truth"]["figures"][0] == {"what": "tlog run exit status", "value": 0, "budget": "0",
                                                    "ok": True}
    figures = {f["what"]: f for c in checks.values() for f in c["figures"]}
    assert figures["training_metrics.csv rows with a loss"]["ok"] is True
    assert figures["tlog run: extra synchronising calls inside steps"]["value"] == 0
    ratio = figures["~1 ms step: median ratio tlog/plain over 1 pairs"]["value"]
    assert isinstance(ratio, float) and ratio > 0
    assert figures["category"]["value"] == "model_inference"  # IndexError in nn.Embedding
    assert figures["phase"]["value"] == "forward_pass"
