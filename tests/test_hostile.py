"""Whatever the child sends or logs, the supervisor reads on, records it and keeps its own verdict (real processes)."""

from __future__ import annotations

import json
import re
import subprocess

from conftest import Runner, clean_env, script, tlog_cmd

HOSTILE = 10_000


def test_ten_thousand_hostile_lines_leave_the_run_and_its_verdict_alone(runner: Runner) -> None:
    res = subprocess.run(tlog_cmd("run", "--no-panel", "--name", "fuzz", script("hostile_lines.py"), str(HOSTILE),
                                  "15"), cwd=runner.cwd, capture_output=True, env=clean_env(), timeout=120)
    stderr = res.stderr.decode("utf-8", "replace")
    assert res.returncode == 0, stderr[-2000:]
    assert "internal error" not in stderr and "Traceback" not in stderr
    # a line may end with the child's own text after a valid event cut out of it ("partial \x1e@tlog {...}")
    own = re.findall(rb"(?:^|partial )((?:own|done) \d+)$", res.stdout, re.MULTILINE)
    assert own == [b"own %d" % i for i in range(0, HOSTILE, 100)] + [b"done %d" % HOSTILE], "the child's output, whole"
    exp = runner.exp("fuzz")
    summary = json.loads((exp / "training_summary.json").read_text())
    assert summary["status"] == "finished" and summary["attempts"][-1]["exit_code"] == 0
    assert summary["metrics"]["good"]["count"] == HOSTILE // 100, "every real metric recorded"
    refused = summary["malformed_events"]
    assert refused > HOSTILE // 2
    log = (exp / "training.log").read_text()
    assert log.count("@tlog ") >= refused, "every refused line kept in training.log"
    events = [json.loads(line) for line in (exp / "events.jsonl").read_text().splitlines()]
    assert not [e for e in events if e["kind"] == "restart" or (e["kind"] == "system" and "status" in e["data"])]
    attempts = [e["data"]["event"] for e in events if e["kind"] == "attempt"]
    assert attempts == ["start", "exit"], "no forged attempt event got in"
    assert max(len(key) for e in events if e["kind"] == "metrics" for key in e["data"]) <= 200, "keys cut"


def test_values_json_cannot_hold_are_converted_and_recording_goes_on(runner: Runner) -> None:
    res = runner.run("run", "-q", "--name", "odd", script("odd_values.py"), "--seed", "18446744073709551616")
    assert res.returncode == 0, res.stderr
    exp = runner.exp("odd")
    config = json.loads((exp / "training_config.json").read_text())
    assert config["args"]["seed"] == "18446744073709551616", "an argparse int beyond 64 bits, exact"
    assert config["huge"] == str(1 << 70) and config["nan"] == "nan key" and config["(1, 2)"] == "tuple key"
    assert "opaque" not in config and config["nested"] == {"deep": [str(1 << 80), "inf"]}
    summary = json.loads((exp / "training_summary.json").read_text())
    assert summary["metrics"]["loss"]["count"] == 5 and summary["metrics"]["count"]["last"] == float(1 << 90)
    assert config["api_seed"] == str(1 << 70) and summary["metrics"]["api_big"]["last"] == float(1 << 100), "seed API"
    warnings = [e["data"]["message"] for e in runner.events("odd") if e["kind"] == "warning"]
    assert len([w for w in warnings if "config event" in w]) == 1, "one warning for the config events"
    assert len([w for w in warnings if "metrics event" in w]) == 1, "one, not one per step"


def test_a_nested_tlog_run_records_its_own_run(runner: Runner) -> None:
    """A sweep driver under ``tlog run`` running its trials with ``tlog run`` (output inherited, then captured)."""
    res = runner.run("run", "-q", "--name", "outer", script("sweep_driver.py"), str(runner.log_dir))
    assert res.returncode == 0, res.stderr
    outer = json.loads((runner.exp("outer") / "training_summary.json").read_text())
    assert {k: v["count"] for k, v in outer["metrics"].items()} == {"trials": 1, "trials_done": 1}
    assert outer["meta"]["argv"][-2].endswith("sweep_driver.py"), "the driver speaks for the outer run"
    for trial in ("trial-inherit", "trial-captured"):
        summary = json.loads((runner.exp(trial) / "training_summary.json").read_text())
        assert summary["status"] == "finished" and summary["metrics"]["loss"]["count"] == 5, trial
        assert summary["meta"]["argv"][-1].endswith("odd_values.py")
