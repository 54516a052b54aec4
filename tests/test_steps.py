"""Every step kept by default: real ``tlog run`` subprocesses, compared with what each script printed."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from conftest import Runner, script

from tlog.hook.probes.report import AUTO_INTERVAL_S
from tlog.store import columns
from tlog.views import series


def _printed(out: str, tag: str = "STEP") -> dict[int, list[float]]:
    return {int(p[1]): [float(v) for v in p[2:]] for line in out.splitlines()
            if (p := line.split()) and p[0] == tag}


def _csv(exp: Path) -> list[dict[str, str]]:
    with open(exp / "training_metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_default_crash_records_every_step_and_lr_at_its_step(runner: Runner) -> None:
    res = runner.run("run", "--name", "crash", script("per_step.py"), "plain", "--steps", "50", "--crash-at", "37")
    assert res.returncode == 1, res.stderr
    truth, lrs = _printed(res.stdout), _printed(res.stdout, "LR")
    rows = _csv(runner.exp("crash"))
    assert [int(r["step"]) for r in rows] == list(range(1, 38))  # one row per step, none after the crash
    for r in rows:
        assert float(r["loss"]) == truth[int(r["step"])][0]  # exact: the step's own loss, not a window mean
        if r["learning_rate"]:
            assert float(r["learning_rate"]) == lrs[int(r["step"])][0]  # the lr the step used
    assert sum(1 for r in rows if r["learning_rate"]) == 37  # a per-step schedule: a change at every step
    windows = [e for e in runner.events("crash") if e["kind"] == "metrics"]
    assert len(windows) < 37  # the window is the unit of transfer, not the step


def test_single_step_spike_in_csv_summary_and_plot_data(runner: Runner) -> None:
    res = runner.run("run", "--name", "spike", script("per_step.py"), "plain", "--steps", "400", "--spike", "300")
    assert res.returncode == 0, res.stderr
    truth = _printed(res.stdout)
    rows = {int(r["step"]): float(r["loss"]) for r in _csv(runner.exp("spike"))}
    assert rows[300] == truth[300][0] and rows[300] > 20 * rows[299]
    summary = json.loads(runner.run("summary", "--log-dir", str(runner.log_dir), "spike", "--json").stdout)
    spike = summary["spike"]
    assert spike["step"] == 300 and spike["value"] == truth[300][0] and spike["ratio"] > 20
    assert summary["metrics"]["loss"]["max"] == truth[300][0] and summary["metrics"]["loss"]["count"] == 400
    text = runner.run("summary", "--log-dir", str(runner.log_dir), "spike").stdout
    assert "at step 300" in text
    assert runner.run("plot", "--log-dir", str(runner.log_dir), "spike").returncode == 0
    loss = columns.read(runner.exp("spike")).get("loss")
    assert loss.shape[0] == 400
    x, y = series.downsample(loss[:, 0], loss[:, 3], buckets=10)  # 40 points drawn of 400: the spike is one
    assert truth[300][0] in y.tolist() and 300 in x.tolist()


def test_gradient_accumulation_and_two_optimizers_keep_per_step_semantics(runner: Runner) -> None:
    res = runner.run("run", "--name", "accum", script("per_step.py"), "accum", "--steps", "30")
    assert res.returncode == 0, res.stderr
    truth = _printed(res.stdout)
    rows = _csv(runner.exp("accum"))
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    for r in rows:
        assert math.isclose(float(r["loss"]), truth[int(r["step"])][0], rel_tol=1e-12)  # the mean of its 2

    res = runner.run("run", "--name", "gan", script("per_step.py"), "gan", "--steps", "30")
    assert res.returncode == 0, res.stderr
    truth = _printed(res.stdout)
    rows = _csv(runner.exp("gan"))
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    for r in rows:
        d, g = truth[int(r["step"])][:2]
        assert float(r["loss"]) == d and float(r["loss/opt1"]) == d and float(r["loss/opt2"]) == g


def test_sigkill_loses_at_most_the_steps_since_the_last_report(runner: Runner) -> None:
    res = runner.run("run", "--name", "kill", script("per_step.py"), "plain", "--steps", "400", "--sleep", "0.01",
                     "--kill-at", "150")
    assert res.returncode == 128 + 9, res.stderr
    truth = _printed(res.stdout)
    rows = _csv(runner.exp("kill"))
    steps = [int(r["step"]) for r in rows]
    last = steps[-1]
    assert steps == list(range(1, last + 1))  # no gap: what was reported is every step
    assert all(float(r["loss"]) == truth[int(r["step"])][0] for r in rows)
    lost = 150 - last
    # The bound (README): the unreported window, at most AUTO_INTERVAL_S of steps after the last report.
    span = truth[150][-1] - truth[last][-1]
    print(f"SIGKILL at step 150 lost {lost} steps ({span:.3f} s of training)")
    assert span < AUTO_INTERVAL_S + 0.2


def test_held_log_lines_reach_the_store_without_another_call_and_survive_sigkill(runner: Runner) -> None:
    """No torch probe: tlog.log lines are held and written together (emitter.HOLD_S); a script that stops
    calling still delivers them (the script waits until events.jsonl holds every value, then SIGKILLs itself)."""
    res = runner.run("run", "--name", "held", script("log_then_kill.py"), "300", timeout=60)
    assert res.returncode == 128 + 9, res.stderr
    rows = list(csv.DictReader(open(runner.exp("held") / "training_metrics.csv", newline="")))
    assert [(int(r["step"]), float(r["value"])) for r in rows] == [(i, i * 0.5) for i in range(1, 301)]
