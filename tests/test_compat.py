"""The seed's Python API (TrainingLoggingManager & co.) on tlog's pipeline: its usage examples run as written,
under ``tlog run`` and under plain python, and leave the same files."""

from __future__ import annotations

import csv
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Runner, clean_env, script, tlog_cmd

from tlog.store.metrics_rows import SEED_COLUMNS

SUMMARY_KEYS = {"current_epoch", "current_batch", "total_batches", "current_loss", "current_accuracy", "best_loss",
                "best_accuracy", "learning_rate", "training_time", "error_count", "memory_usage", "gpu_memory"}
SEED_ERROR_KEYS = ("category", "phase", "error_message", "timestamp", "epoch", "batch", "recovery_attempted",
                   "recovery_successful", "recovery_time")


def _run(runner: Runner, mode: str, name: str, seed_script: str) -> tuple[dict, str, Path]:
    """Run a seed script under ``tlog run --name NAME`` or plain python; returns (RESULT, stdout, experiment)."""
    if mode == "tlog":  # the probe reports each step when it closes (by default reports are batched)
        res = runner.run("run", "--name", name, "--log-every", "1", script(seed_script), timeout=180)
    else:
        res = subprocess.run([sys.executable, script(seed_script)], cwd=runner.cwd, capture_output=True, text=True,
                             env=clean_env(), timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(next(line for line in res.stdout.splitlines() if line.startswith("RESULT "))[7:])
    exp = Path(result["experiment_dir"])
    return result, res.stdout, exp if exp.is_absolute() else runner.cwd / exp


def _rows(exp: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(exp / "training_metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _events(exp: Path, kind: str) -> list[dict]:
    return [e for e in map(json.loads, (exp / "events.jsonl").read_text().splitlines()) if e["kind"] == kind]


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _monitoring_lines(summary: dict, errors: dict) -> list[str]:
    return [f"Current epoch: {summary['current_epoch']}", f"Current loss: {summary['current_loss']:.4f}",
            f"Best accuracy: {summary['best_accuracy']:.4f}", f"Total errors: {errors['total_errors']}",
            f"Recovery success rate: {errors['recovery_success_rate']:.2%}"]


@pytest.mark.parametrize("mode", ["tlog", "plain"])
def test_basic_usage_as_written(runner: Runner, mode: str) -> None:
    result, stdout, exp = _run(runner, mode, "basic", "seed_basic.py")
    assert exp == (runner.exp("basic") if mode == "tlog" else runner.log_dir / "my_experiment")
    losses = result["losses"]  # [epoch, batch, loss] of each completed batch
    assert len(losses) == 998, "1000 batches, two planted failures"

    header, rows = _rows(exp)
    assert tuple(header[:16]) == SEED_COLUMNS and "step" in header
    assert [(int(r["step"]), int(r["epoch"]), int(r["batch"]), float(r["loss"])) for r in rows] == [
        (i + 1, e, b, loss) for i, (e, b, loss) in enumerate(losses)]
    assert {r["learning_rate"] for r in rows} == {"0.001"} and {r["total_batches"] for r in rows} == {"100"}
    assert float(rows[-1]["best_loss"]) == min(loss for _, _, loss in losses)
    assert float(rows[-1]["memory_usage"]) > 0
    for epoch in range(10):  # epoch_loss lands on the epoch's last completed row: the mean of its batches
        mine = [loss for e, _, loss in losses if e == epoch]
        last = max(i for i, (e, _, _) in enumerate(losses) if e == epoch)
        assert float(rows[last]["epoch_loss"]) == sum(mine) / len(mine)
        assert [i for i, r in enumerate(rows) if r["epoch_loss"] and int(r["epoch"]) == epoch] == [last]
    assert float(rows[-1]["final_loss"]) == losses[-1][2] == result["final_loss"]

    config = json.loads((exp / "training_config.json").read_text())
    assert {k: config[k] for k in ("model_type", "learning_rate", "batch_size", "epochs")} == {
        "model_type": "neural_network", "learning_rate": 0.001, "batch_size": 32, "epochs": 10}

    errors = json.loads((exp / "training_errors.json").read_text())
    assert [{k: e[k] for k in SEED_ERROR_KEYS if k not in ("timestamp", "recovery_time")} for e in errors] == [
        {"category": "loss_computation", "phase": "loss_computation", "error_message": f"non-finite loss at epoch "
         f"{ep} batch {b}", "epoch": ep, "batch": b, "recovery_attempted": True, "recovery_successful": ok}
        for ep, b, ok in ((3, 50, True), (9, 99, False))]
    first, last = errors
    assert 0 <= first["recovery_time"] < 5 and last["recovery_time"] is None
    assert (first["step"], first["recovered_at_step"], last["step"]) == (350, 351, 998)
    assert last["recovery_note"] == "training ended before a step completed after the error"
    assert first["traceback"].rstrip().endswith("FloatingPointError: non-finite loss at epoch 3 batch 50")
    listed = json.loads(subprocess.run(tlog_cmd("errors", str(exp), "--json"), cwd=runner.cwd, capture_output=True,
                                       text=True, env=clean_env(), timeout=60).stdout)
    assert [(e["batch"], e["recovery_successful"]) for e in listed] == [(50, True), (99, False)]

    summary, error_summary = result["summary"], result["error_summary"]
    assert set(summary) == SUMMARY_KEYS
    accuracy = [float(r["accuracy"]) for r in rows]
    assert {k: summary[k] for k in ("current_epoch", "current_batch", "total_batches", "current_loss",
                                    "current_accuracy", "best_loss", "best_accuracy", "learning_rate",
                                    "error_count")} == {
        "current_epoch": 9, "current_batch": 98, "total_batches": 100, "current_loss": losses[-1][2],
        "current_accuracy": accuracy[-1], "best_loss": min(loss for _, _, loss in losses),
        "best_accuracy": max(accuracy), "learning_rate": 0.001, "error_count": 2}
    assert error_summary == {"total_errors": 2, "error_categories": {"loss_computation": 2},
                             "error_phases": {"loss_computation": 2}, "recovery_success_rate": 0.5}
    assert stdout.splitlines()[:5] == _monitoring_lines(summary, error_summary)
    assert result["history"] == 1000, "metrics_history is a bounded window (1019 updates)"

    assert _png_size(exp / "plots" / "training_progress.png") == (320, 200), "plot_config: 8x5 in at 40 dpi"
    memory = [w["data"] for w in _events(exp, "warning") if w["data"]["category"] == "memory"]
    assert len(memory) == 1 and memory[0]["message"].startswith("High memory usage: ")
    assert memory[0]["message"].endswith("MB (threshold 1 MB)")
    config_warnings = [w["data"]["message"] for w in _events(exp, "warning") if w["data"]["category"] == "config"]
    if mode == "tlog":
        assert config_warnings == [f"TrainingLoggingManager asked for experiment 'my_experiment'; tlog run records "
                                   f"this run in {exp.resolve()}"]
    else:
        assert config_warnings == []
        assert "! ERROR - Error in loss_computation: non-finite loss at epoch 3 batch 50" in \
            (exp / "training.log").read_text(), "the seed's logger writes training.log through the store"


@pytest.mark.parametrize("mode", ["tlog", "plain"])
def test_advanced_usage_and_configuration_as_written(runner: Runner, mode: str) -> None:
    result, stdout, exp = _run(runner, mode, "adv", "seed_advanced.py")
    if mode == "tlog":
        assert exp == runner.exp("adv") and not (runner.cwd / "custom_logs").exists()
        [warning] = [w["data"]["message"] for w in _events(exp, "warning") if w["data"]["category"] == "config"]
        assert warning == ("TrainingLoggingManager asked for experiment 'my_experiment' in log_dir 'custom_logs'; "
                           f"tlog run records this run in {exp.resolve()}")
    else:
        assert exp == runner.cwd / "custom_logs" / "my_experiment", "log_dir and experiment_name honoured"

    _, rows = _rows(exp)
    assert [(int(r["step"]), float(r["loss"])) for r in rows] == list(enumerate(result["losses"], 1))
    assert len(rows) == 17, "20 batches, three planted failures"

    errors = json.loads((exp / "training_errors.json").read_text())
    assert [(e["category"], e["step"], e["recovery_attempted"], e["recovery_successful"], e["recovery_note"])
            for e in errors] == [
        ("memory", 4, True, True, "a step logged its metrics"),
        ("gradient_computation", 7, True, False, "another error came before a step completed"),
        ("gradient_computation", 7, True, True, "a step logged its metrics")]
    assert errors[0]["error_message"] == "CUDA out of memory. Tried to allocate 2.00 GiB"
    assert errors[0]["recovered_at_step"] == 5 and errors[2]["recovered_at_step"] == 8

    error_summary = result["error_summary"]
    assert error_summary == {"total_errors": 3, "error_categories": {"memory": 1, "gradient_computation": 2},
                             "error_phases": {"loss_computation": 3}, "recovery_success_rate": 2 / 3}
    assert stdout.splitlines()[:5] == _monitoring_lines(result["summary"], error_summary)
    assert result["summary"]["current_loss"] == result["losses"][-1] and result["monitoring_active"]
    assert _png_size(exp / "plots" / "training_progress.png") == (4500, 3000), "plot_config: 15x10 in at 300 dpi"


def test_validation_string_enums_and_errors_without_recovery(runner: Runner) -> None:
    (runner.log_dir / "api").mkdir(parents=True)  # a taken name: never written over, no warning for it
    result, _, exp = _run(runner, "plain", "", "seed_api.py")
    assert exp == runner.log_dir / "api-2"
    assert result["validation"] == [0.9, 0.6, 1], "val_loss/val_acc/loss are validation values; patience counts"
    assert result["bests"] == [0.8, 0.7] and result["handler"] and result["zeroed"] == 2
    assert result["phases"] == [["training_start", "start"], ["epoch_start", "start"], ["validation", "end"],
                                ["validation", "end"], ["epoch_end", "end"], ["training_end", "end"]]
    assert result["error_summary"] == {
        "total_errors": 2, "error_categories": {"gradient_computation": 1, "data_loading": 1},
        "error_phases": {"backward_pass": 1, "data_loading": 1}, "recovery_success_rate": 0.0}
    _, rows = _rows(exp)
    assert [(r["step"], r["loss"], r["validation_loss"], r["validation_accuracy"], r["epoch_loss"]) for r in rows] == [
        ("1", "1.0", "", "", ""), ("2", "0.9", "", "", ""), ("3", "0.8", "0.9", "0.6", "0.9")]
    assert json.loads((exp / "training_config.json").read_text()) == {
        "lr": 0.1, "layers": [1, 2], "path": "/data/x", "3": "an int key"}
    errors = json.loads((exp / "training_errors.json").read_text())
    assert [(e["category"], e["phase"], e["recovery_attempted"], e["recovery_successful"], e["context"])
            for e in errors] == [("gradient_computation", "backward_pass", True, False, {"model": "<FakeModel>"}),
                                 ("data_loading", "data_loading", False, False, {})]
    assert [w for w in _events(exp, "warning") if w["data"]["category"] == "config"] == []


def test_seed_api_imports_nothing_heavy_in_the_child(tmp_path: Path) -> None:
    code = ("import sys, tlog; tlog.TrainingLoggingManager; tlog.RobustErrorHandler; "
            "print(sorted(m for m in ('torch', 'numpy', 'matplotlib', 'rich', 'psutil', 'typer') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env=clean_env(), timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
