"""Reports: summary (finished, running, crashed, truncated), errors filters across runs, ls, compare.

Exact values come from experiments written through the real writer with known events; the end-to-end
tests run real ``tlog run`` / ``tlog summary`` subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import Runner, script

from tlog import protocol
from tlog.direction import metric_mode
from tlog.report import ReportError, compare, filter_errors, list_summaries, load_errors, load_summary
from tlog.store import layout, snapshot
from tlog.store.reader import iter_events
from tlog.store.summary import SummaryBuilder
from tlog.store.writer import ExperimentWriter
from tlog.views.watch import Watcher

T0 = 1_790_000_000.0
ARGV = ["python", "train.py", "--lr", "0.1"]


def run_events(steps: int, lr: float = 0.1, error_at: int | None = None, category: str = "memory",
               phase: str = "forward_pass", start_step: int = 1, attempt: int = 1, t0: float = T0) -> list[dict]:
    """One attempt: start, config, per step the probe's loss and the script's accuracy, validation every 5."""
    events: list[dict] = [
        {"kind": "meta", "t": t0, "attempt": 0, "data": {"host": "elsewhere", "supervisor_pid": 1, "argv": ARGV}},
        {"kind": "config", "t": t0, "attempt": 0, "data": {"lr": lr, "model": {"depth": 4}, "tlog": {"grace": 1}}},
        {"kind": "attempt", "t": t0 + 0.1, "attempt": attempt, "data": {"event": "start", "attempt": attempt}},
    ]
    for step in range(start_step, start_step + steps):
        t = t0 + step
        loss = 10.0 / step
        events.append({"kind": "metrics", "t": t, "step": step, "epoch": (step - 1) // 4, "batch": (step - 1) % 4,
                       "src": "auto", "data": {"loss": loss, "learning_rate": lr, "total_batches": 4}})
        events.append({"kind": "metrics", "t": t + 0.1, "step": step, "data": {"accuracy": step / 100}})
        if step % 5 == 0:
            events.append({"kind": "metrics", "t": t + 0.2, "step": step, "data": {"validation_loss": loss + 1}})
        if step % 4 == 0:
            events.append({"kind": "checkpoint", "t": t + 0.3, "step": step, "data": {"path": f"ck{step}.pt"}})
        events.append({"kind": "system", "t": t + 0.4, "data": {"rss_mb": 100.0 + step, "rss_max_mb": 100.0 + step,
                                                                 "mem_limit_mb": 1000.0, "headroom_mb": 900 - step}})
        if step == error_at:
            events.append({"kind": "error", "t": t + 0.5, "step": step, "data": {
                "category": category, "phase": phase, "cause": f"{category} trouble at step {step}",
                "error_message": "RuntimeError: boom", "traceback": "Traceback (most recent call last):\nboom\n",
                "attempt": attempt, "step": step, "epoch": (step - 1) // 4, "batch": (step - 1) % 4}})
    return events


def write_run(log_dir: Path, name: str, events: list[dict], status: str | None = "finished") -> Path:
    """Through the real writer; ``status`` None leaves it open, as a run whose supervisor was killed."""
    writer = ExperimentWriter(log_dir / name)
    writer.write_events(events)
    writer.flush()
    if status is not None:
        writer.write_events([{"kind": "attempt", "t": events[-1]["t"] + 1, "attempt": 1,
                              "data": {"event": "exit", "attempt": 1, "status": status,
                                       "exit_code": 0 if status == "finished" else 1}}])
        writer.close(status)
    return log_dir / name


def append(exp: Path, events: list[dict], tail: bytes = b"") -> None:
    with open(exp / layout.EVENTS, "ab") as f:
        f.writelines(protocol.dumps(e) + b"\n" for e in events)
        f.write(tail)


def full_fold(exp: Path) -> dict:
    builder = SummaryBuilder(exp.name)
    for event in iter_events(exp):
        builder.add(event)
    return builder.result()


def test_summary_of_a_finished_run_has_exact_values(tmp_path: Path) -> None:
    exp = write_run(tmp_path, "done", run_events(20, error_at=7))
    s = load_summary(exp)
    assert (s["status"], s["steps"], s["epochs"], s["restarts"]) == ("finished", 20, 5, 0)
    loss = s["metrics"]["loss"]
    assert (loss["last"], loss["best"], loss["best_step"], loss["mode"]) == (0.5, 0.5, 20, "min")
    acc = s["metrics"]["accuracy"]
    assert (acc["best"], acc["best_step"], acc["mode"]) == (0.2, 20, "max")
    assert s["metrics"]["validation_loss"]["count"] == 4 and s["metrics"]["validation_loss"]["best"] == 1.5
    assert "best" not in s["metrics"]["learning_rate"] and "total_batches" not in s["metrics"]
    assert s["steps_per_s"] == pytest.approx(19 / 19.2)  # first to last metrics event
    assert s["checkpoints"]["count"] == 5 and s["checkpoints"]["newest"]["path"] == "ck20.pt"
    assert s["errors"]["by_category"] == {"memory": 1}
    assert s["resources"]["peaks"] == {"rss_mb": 120.0, "mem_limit_mb": 1000.0, "headroom_min_mb": 880}
    assert s["command"] == ARGV and s["config"]["model"] == {"depth": 4}


def test_crashed_supervisor_summary_restores_the_snapshot_and_folds_the_rest(tmp_path: Path) -> None:
    exp = write_run(tmp_path, "cut", run_events(12), status=None)
    restored = snapshot.restore(exp)
    assert restored is not None and restored[1] == (exp / layout.EVENTS).stat().st_size
    later = run_events(8, start_step=13, error_at=15, category="data_loading")[3:]
    append(exp, later, tail=b'{"kind":"metrics","t":1790000030.0,"step":21,"data":{"lo')
    s = load_summary(exp)
    expected = full_fold(exp)
    assert s["metrics"] == expected["metrics"] and s["steps"] == expected["steps"] == 20
    assert s["errors"] == expected["errors"] and s["errors"]["by_category"] == {"data_loading": 1}
    assert s["partial_tail"] is True and s["malformed_lines"] == 0
    assert s["status"] == "running", "the supervisor's host is another machine: it may still be running"


def test_summary_state_round_trips_through_json() -> None:
    events = run_events(30, error_at=9)
    half = SummaryBuilder("x")
    for e in events[:40]:
        half.add(e)
    resumed = SummaryBuilder.from_state(protocol.loads(protocol.dumps(half.state())))
    whole = SummaryBuilder("x")
    for e in events:
        whole.add(e)
    for e in events[40:]:
        resumed.add(e)
    assert resumed.result() == whole.result()
    assert SummaryBuilder.from_state({**half.state(), "added_later": 1}) is None


def test_truncated_experiment_without_snapshot_still_reports(tmp_path: Path) -> None:
    exp = tmp_path / "trunc"
    exp.mkdir()
    append(exp, run_events(6), tail=b'{"kind":"metrics","t":17900')
    with open(exp / layout.EVENTS, "r+b") as f:  # a corrupt line in the middle, as after a disk error
        data = f.read().replace(b'{"kind":"checkpoint"', b'{"kind":"checkpo\x00', 1)
        f.seek(0)
        f.write(data)
    s = load_summary(exp)
    assert s["steps"] == 6 and s["metrics"]["loss"]["last"] == 10 / 6
    assert s["malformed_lines"] == 1 and s["partial_tail"] is True
    assert s["checkpoints"]["count"] == 0


def test_ended_run_without_snapshot_is_folded_once(tmp_path: Path) -> None:
    exp = tmp_path / "cold"
    exp.mkdir()
    exit_event = {"kind": "attempt", "t": T0 + 20, "attempt": 1,
                  "data": {"event": "exit", "attempt": 1, "status": "failed", "exit_code": 1}}
    half_line = b'{"kind":"metrics","t":17900'
    append(exp, [*run_events(6, error_at=6), exit_event], tail=half_line)
    first = load_summary(exp)
    assert first["status"] == "failed" and first["steps"] == 6
    assert (exp / snapshot.STATE).is_file(), "the fold of an ended run is saved for the next report"
    restored = snapshot.restore(exp)
    assert restored is not None and restored[1] == (exp / layout.EVENTS).stat().st_size - len(half_line)
    second = load_summary(exp)
    assert {k: v for k, v in second.items() if k != "partial_tail"} == \
        {k: v for k, v in first.items() if k != "partial_tail"}


def test_errors_filters_across_experiments(runner: Runner) -> None:
    write_run(runner.log_dir, "oom-run", run_events(10, error_at=4, category="memory", phase="forward_pass"),
              status="failed")
    write_run(runner.log_dir, "data-run", run_events(10, error_at=6, category="data_loading",
                                                     phase="data_loading", t0=T0 + 100), status="failed")
    write_run(runner.log_dir, "clean", run_events(5, t0=T0 + 200))
    every = [e for d in layout.list_experiments(runner.log_dir) for e in load_errors(d)]
    assert [(e["experiment"], e["step"]) for e in every] == [("data-run", 6), ("oom-run", 4)]
    assert [e["experiment"] for e in filter_errors(every, category="memory")] == ["oom-run"]
    assert [e["experiment"] for e in filter_errors(every, phase="data")] == ["data-run"]  # an alias
    assert filter_errors(every, category="memory", phase="data_loading") == []
    with pytest.raises(ReportError, match="unknown phase 'fwd'"):
        filter_errors(every, phase="fwd")
    res = runner.run("errors", "--all", "--category", "memory", "--traceback")
    assert res.stdout.splitlines()[:2] == [
        "oom-run  [memory]  phase forward_pass  attempt 1  (step 4, epoch 0, batch 3)", "    memory trouble at step 4"]
    assert "      Traceback (most recent call last):" in res.stdout and "data-run" not in res.stdout
    res = runner.run("errors", "--all", "--category", "memroy")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("tlog: error: unknown category 'memroy'; valid: data_loading, ")
    assert len(res.stderr.splitlines()) == 1


def test_unknown_experiment_is_one_line(runner: Runner) -> None:
    write_run(runner.log_dir, "real", run_events(3))
    for command in ("summary", "plot"):
        res = runner.run(command, "nope")
        assert res.returncode == 2, command
        assert res.stderr == f"tlog: error: unknown experiment 'nope' (looked in {Path('training_logs')})\n"


def test_ls_filters_and_fits_80_columns(runner: Runner) -> None:
    long = "resnet50-imagenet-lr3e-4-warmup-cosine-20261130"
    write_run(runner.log_dir, long, run_events(8, t0=T0 + 10))
    write_run(runner.log_dir, "tiny-failed", run_events(3, error_at=2, t0=T0 + 20), status="failed")
    write_run(runner.log_dir, "older", run_events(4))
    rows = list_summaries(runner.log_dir)
    assert [r["experiment"] for r in rows] == ["tiny-failed", long, "older"]
    assert rows[1]["best_loss"] == 10 / 8 and rows[0]["errors"] == 1
    res = runner.run("ls")
    lines = res.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[2].split()[1] == "finished"
    pieces = [lines[2].split()[0]]
    for line in lines[3:]:
        if len(line.split()) != 1:
            break
        pieces.append(line.strip())
    assert "".join(pieces) == long, "a long name wraps onto the next lines, it is never cut"
    assert [r["experiment"] for r in list_summaries(runner.log_dir, status="failed")] == ["tiny-failed"]
    assert [r["experiment"] for r in list_summaries(runner.log_dir, pattern="res*")] == [long]
    assert [r["experiment"] for r in list_summaries(runner.log_dir, pattern="old")] == ["older"]
    res = runner.run("ls", "--status", "done")
    assert res.returncode == 2 and "unknown status 'done'; valid: running" in res.stderr


def test_compare_shows_config_differences_and_metrics(runner: Runner) -> None:
    a = write_run(runner.log_dir, "lr-0.1", run_events(10, lr=0.1))
    b = write_run(runner.log_dir, "lr-0.01", run_events(6, lr=0.01, t0=T0 + 50))
    c = compare([a, b])
    assert c["experiments"] == ["lr-0.1", "lr-0.01"]
    assert c["config"]["differs"] == {"lr": [0.1, 0.01]}
    assert c["config"]["same"] == 2  # model.depth and tlog.grace
    assert c["metrics"]["loss"] == [
        {"last": 1.0, "best": 1.0, "best_step": 10, "mode": "min", "min": 1.0, "max": 10.0},
        {"last": 10 / 6, "best": 10 / 6, "best_step": 6, "mode": "min", "min": 10 / 6, "max": 10.0}]
    assert c["facts"]["steps"] == [10, 6]
    res = runner.run("compare", "lr-0.1", "lr-0.01")
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.strip().startswith("lr "))
    assert line.split() == ["lr", "0.1", "0.01"]
    assert "config: 1 key(s) differ, 2 identical" in res.stdout
    assert json.loads(runner.run("compare", "lr-0.1", "lr-0.01", "--json").stdout) == protocol.loads(
        protocol.dumps(c)) | {"paths": [str(Path("training_logs") / "lr-0.1"), str(Path("training_logs") / "lr-0.01")]}


def test_running_then_killed_supervisor_end_to_end(runner: Runner) -> None:
    """A real run held mid-way: its summary while running, then after its supervisor is SIGKILLed."""
    proc = runner.popen("run", "--name", "held", "--log-every", "1", script("steps.py"), "--hold-at", "6",
                        start_new_session=True)
    try:
        for line in proc.stdout:
            if line.strip() == "READY":
                break
        deadline = time.monotonic() + 10
        while (running := json.loads(runner.run("summary", "held", "--json").stdout))["steps"] != 6:
            assert time.monotonic() < deadline, running["steps"]
        assert running["status"] == "running"
        os.killpg(proc.pid, signal.SIGKILL)  # the supervisor and, in its own group, the script
        child = next(e for e in runner.events("held") if e["kind"] == "attempt")["data"]["pid"]
        os.killpg(child, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    time.sleep(0.1)
    s = json.loads(runner.run("summary", "held", "--json").stdout)
    assert s["status"] == "interrupted" and s["steps"] == 6
    assert s["metrics"]["loss"]["count"] == 6
    assert s["metrics"]["loss"] == full_fold(runner.exp("held"))["metrics"]["loss"]
    text = runner.run("summary", "held").stdout
    assert "interrupted (its supervisor is gone)" in text and "loss" in text
    res = runner.run("plot", "held", "-o", "held.svg")
    assert res.returncode == 0, res.stderr
    assert (runner.cwd / "held.svg").read_text().startswith("<?xml")


def test_summary_text_and_json(runner: Runner) -> None:
    exp = write_run(runner.log_dir, "real", run_events(3, error_at=3), status="failed")
    summary = load_summary(exp)
    saved = json.loads((exp / layout.SUMMARY).read_text())
    assert {k: v for k, v in summary.items() if k not in ("path", "malformed_lines", "partial_tail")} == saved
    lines = runner.run("summary").stdout.splitlines()
    assert lines[0] == "real  failed"
    assert lines[2].startswith("  steps       3   epochs 1   throughput 0.9")
    assert lines[3] == "  command     python train.py --lr 0.1"
    assert [ln.split() for ln in lines if ln.split()[:1] == ["loss"]] == [
        ["loss", "3.333", "3.333", "3", "3.333", "10"]]
    assert "  RAM         103 MB peak of 1,000 MB, lowest headroom 897 MB" in lines
    assert "  errors      1 (memory 1)" in lines and "    - [memory] memory trouble at step 3" in lines
    assert "  config      lr=0.1, model.depth=4" in lines
    assert "  constant    learning_rate=0.1" in lines, "a setting that never moved: once, not a metric row"
    assert not [ln for ln in lines if ln.split()[:1] == ["learning_rate"]]


def test_metric_direction_is_one_rule_for_panel_and_summary(runner: Runner) -> None:
    """val_mse, wer and nll are best at their minimum in the panel's state and in ``tlog summary`` alike;
    accuracy-like names at their maximum; a setting (beta1, lr) or an unknown name has no best anywhere."""
    (runner.cwd / "tlog.toml").write_text('[metric_modes]\nwidgets = "max"\n')
    assert runner.run("run", "--name", "dirs", "--", sys.executable, script("directions.py")).returncode == 0
    watcher = Watcher(runner.exp("dirs"))
    watcher.poll()
    panel = watcher.state.metrics
    result = runner.run("summary", "dirs", "--json", "--log-dir", str(runner.log_dir))
    summary = json.loads(result.stdout)["metrics"]
    expected = {"val_mse": (0.2, 2), "wer": (0.2, 2), "train/nll": (0.2, 2), "accuracy": (0.9, 3),
                "top1_acc": (0.9, 3), "widgets": (0.9, 3), "beta1": (None, None), "lr": (None, None)}
    for name, (best, best_step) in expected.items():
        assert panel[name].best == best, name
        assert (summary[name].get("best"), summary[name].get("best_step")) == (best, best_step), name
        assert panel[name].last == summary[name]["last"] == 0.4


@pytest.mark.parametrize(("name", "mode"), [
    ("val_mse", "min"), ("train/nll", "min"), ("valLoss", "min"), ("eval-wer", "min"), ("step_time", "min"),
    ("acc_loss", "min"), ("top1_acc", "max"), ("mAP", "max"), ("f1", "max"), ("val.rouge_l", "max"),
    ("bitmap_size", None), ("lr", None), ("grad_norm", None), ("loss_scale", None), ("beta2", None),
    ("epoch", None), ("widgets", None)])
def test_metric_mode_reads_words_of_the_name(name: str, mode: str | None) -> None:
    assert metric_mode(name) == mode
    assert metric_mode(name, {name: "max"}) == "max"
