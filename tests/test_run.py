"""``tlog run`` end to end: real children, real signals, real files."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, Runner, clean_env, script, tlog_cmd

from tlog import protocol
from tlog.store.metrics_rows import SEED_COLUMNS


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def printed_losses(stdout: str) -> dict[int, float]:
    return {int(p[1]): float(p[3]) for p in (line.split() for line in stdout.splitlines()) if p[:1] == ["STEP"]}


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_clean_run_writes_every_file_with_exact_values(runner: Runner) -> None:
    res = runner.run("run", "--name", "clean", "--log-every", "1", script("steps.py"), "--epochs", "2", "--log-acc",
                     "--save", str(runner.cwd / "ck{epoch}.pt"))
    assert res.returncode == 0, res.stderr
    exp = runner.exp("clean")
    for name in ("events.jsonl", "training.log", "training_metrics.csv", "training_errors.json",
                 "training_progress.json", "training_config.json", "training_summary.json"):
        assert (exp / name).is_file(), name
    losses = printed_losses(res.stdout)
    assert len(losses) == 8  # 2 epochs x 4 batches
    rows = csv_rows(exp / "training_metrics.csv")
    header = next(csv.reader(open(exp / "training_metrics.csv")))
    assert tuple(header[:16]) == SEED_COLUMNS and header[16] == "step"
    assert len(rows) == 8, "one row per optimizer step"
    for row in rows:
        step = int(row["step"])
        assert abs(float(row["loss"]) - losses[step]) < 1e-6
        assert row["accuracy"] != "", "explicit tlog.log merged into the step's row"
        assert float(row["learning_rate"]) == 0.1
    assert [(r["epoch"], r["batch"]) for r in rows[:5]] == [("0", "0"), ("0", "1"), ("0", "2"), ("0", "3"),
                                                             ("1", "0")]
    assert {r["total_batches"] for r in rows} == {"4"}
    assert float(rows[-1]["best_loss"]) == pytest.approx(min(losses.values()), abs=1e-6)
    ckpts = [e for e in runner.events("clean") if e["kind"] == "checkpoint"]
    assert [(c["step"], Path(c["data"]["path"]).name) for c in ckpts] == [(4, "ck0.pt"), (8, "ck1.pt")]
    assert ckpts[0]["data"]["bytes"] == (runner.cwd / "ck0.pt").stat().st_size
    summary = json.loads((exp / "training_summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 8 and summary["epochs"] == 2
    assert summary["metrics"]["loss"]["last"] == pytest.approx(losses[8], abs=1e-6)
    assert json.loads((exp / "training_errors.json").read_text()) == []
    log = (exp / "training.log").read_text()
    assert "| STEP 8 1" in log and "! DONE" in log
    assert "@tlog" not in res.stdout and "\x1e" not in res.stdout, "events never reach the console"


def test_crash_mid_epoch_keeps_metrics_and_records_traceback(runner: Runner) -> None:
    res = runner.run("run", "--name", "crash", "--log-every", "1", script("steps.py"), "--crash-at", "6")
    assert res.returncode == 1
    assert "planted failure at step 6" in res.stderr, "the script's traceback still reaches the terminal"
    rows = csv_rows(runner.exp("crash") / "training_metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    errors = json.loads((runner.exp("crash") / "training_errors.json").read_text())
    assert len(errors) == 1
    err = errors[0]
    for key in ("category", "phase", "error_message", "timestamp", "epoch", "batch", "recovery_attempted",
                "recovery_successful", "recovery_time"):
        assert key in err
    assert err["error_message"] == "RuntimeError: planted failure at step 6"
    assert "Traceback (most recent call last)" in err["traceback"] and "steps.py" in err["traceback"]
    assert (err["epoch"], err["batch"], err["step"], err["exit_code"]) == (1, 1, 6, 1)
    summary = json.loads((runner.exp("crash") / "training_summary.json").read_text())
    assert summary["status"] == "failed"


def test_sigkill_of_the_child_loses_no_event(runner: Runner) -> None:
    proc = runner.popen("run", "--name", "k9", "--log-every", "1", script("steps.py"), "--epochs", "50",
                        "--hold-at", "37")
    seen = ""
    while "READY" not in seen:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        seen += line
    child_pid = next(e for e in runner.events("k9") if e["kind"] == "attempt")["data"]["pid"]
    import os

    os.kill(child_pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGKILL
    steps = [e["step"] for e in runner.events("k9") if e["kind"] == "metrics"]
    assert steps == list(range(1, 38))
    exit_event = [e for e in runner.events("k9") if e["kind"] == "attempt"][-1]["data"]
    assert exit_event["signal"] == signal.SIGKILL and exit_event["status"] in ("killed", "oom-killed")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_is_forwarded_and_run_closed_cleanly(runner: Runner, sig: int) -> None:
    proc = runner.popen("run", "--name", "sig", script("steps.py"), "--epochs", "50", "--hold-at", "3")
    while "READY" not in proc.stdout.readline():
        pass
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig
    summary = json.loads((runner.exp("sig") / "training_summary.json").read_text())
    assert summary["status"] == "killed"
    assert summary["attempts"][-1]["signal"] == sig


def test_grace_period_then_group_kill(runner: Runner) -> None:
    stubborn = runner.cwd / "stubborn.py"
    stubborn.write_text(textwrap.dedent("""
        import signal, time, subprocess, sys
        signal.signal(signal.SIGTERM, lambda *a: print("ignoring TERM", flush=True))
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        print("READY", child.pid, flush=True)
        time.sleep(3600)
    """))
    proc = runner.popen("run", "--grace", "1", "--name", "grace", str(stubborn))
    line = proc.stdout.readline()
    grandchild = int(line.split()[1])
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    elapsed = time.monotonic() - t0
    assert "ignoring TERM" in out
    assert 0.9 <= elapsed < 8, elapsed
    assert proc.returncode == 128 + signal.SIGKILL
    time.sleep(0.2)
    assert not _alive(grandchild), "the whole process group was killed"


def test_bash_script_speaks_the_wire(runner: Runner) -> None:
    sh = runner.cwd / "train.sh"
    sh.write_text(textwrap.dedent("""\
        #!/usr/bin/env bash
        for i in 1 2 3; do
          echo "working on $i"
          echo "@tlog {\\"step\\": $i, \\"loss\\": 0.$i}"
        done
        echo '@tlog {"kind": "checkpoint", "step": 3, "data": {"path": "/tmp/x.ckpt"}}'
        echo '@tlog {this is not json'
        printf 'no newline at the end'
    """))
    sh.chmod(0o755)
    res = runner.run("run", "--name", "bash", "--", "bash", str(sh))
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("working on") == 3
    assert '@tlog {"step"' not in res.stdout
    assert "@tlog {this is not json" in res.stdout, "a malformed event line is kept as output"
    assert res.stdout.endswith("no newline at the end")
    assert "1 malformed event line" in res.stderr
    rows = csv_rows(runner.exp("bash") / "training_metrics.csv")
    assert [(r["step"], r["loss"]) for r in rows] == [("1", "0.1"), ("2", "0.2"), ("3", "0.3")]
    log = (runner.exp("bash") / "training.log").read_text()
    assert "| @tlog {this is not json" in log and "| no newline at the end" in log


def test_output_without_newline_around_events(runner: Runner) -> None:
    py = runner.cwd / "partial.py"
    py.write_text(textwrap.dedent("""
        import tlog
        print("epoch 1: ", end="")
        tlog.log(loss=0.5, step=1)
        print("done")
        print("progress 10%", end="\\r")
        print("progress 100%")
        tlog.log(loss=float("nan"), step=2)
    """))
    res = subprocess.run(tlog_cmd("run", "--name", "partial", str(py)), cwd=runner.cwd, capture_output=True,
                         env=clean_env(), timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"epoch 1: done\nprogress 10%\rprogress 100%\n"
    log = (runner.exp("partial") / "training.log").read_text()
    assert "| epoch 1: done\n" in log
    assert "| progress 100%\n" in log and "progress 10%" not in log, "\\r progress collapsed in the log"
    metrics = [e for e in runner.events("partial") if e["kind"] == "metrics"]
    assert [m["data"]["loss"] for m in metrics] == [0.5, "nan"]


def test_missing_script_is_one_line_exit_2(runner: Runner) -> None:
    res = runner.run("run", "nope.py")
    assert res.returncode == 2
    assert res.stderr.strip() == "tlog: error: no such script: nope.py"
    assert not runner.log_dir.exists() or not any(runner.log_dir.iterdir())


def test_missing_command_is_one_line(runner: Runner) -> None:
    res = runner.run("run", "--", "no-such-program-xyz")
    assert res.returncode == 127
    assert res.stderr.strip() == "tlog: error: command not found: no-such-program-xyz"


@pytest.mark.parametrize("bad", ["../x", "a/b", ".."])
def test_bad_names_refused(runner: Runner, bad: str) -> None:
    res = runner.run("run", "--name", bad, script("steps.py"))
    assert res.returncode == 2
    assert "invalid experiment name" in res.stderr and "Traceback" not in res.stderr
    assert not (runner.cwd / "x").exists()


def test_same_name_twice_does_not_clobber(runner: Runner) -> None:
    first = runner.run("run", "--name", "same", "--log-every", "1", script("steps.py"), "--epochs", "1")
    second = runner.run("run", "--name", "same", "--log-every", "1", script("steps.py"), "--epochs", "2")
    assert first.returncode == second.returncode == 0
    assert "this run is 'same-2'" in second.stderr
    assert len(csv_rows(runner.exp("same") / "training_metrics.csv")) == 4
    assert len(csv_rows(runner.exp("same-2") / "training_metrics.csv")) == 8


def test_script_arguments_belong_to_the_script(runner: Runner) -> None:
    py = runner.cwd / "args.py"
    py.write_text("import sys; print(sys.argv[1:])\n")
    res = runner.run("run", "--name", "args", str(py), "--lr", "3", "--help", "--name", "x")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "['--lr', '3', '--help', '--name', 'x']"


def test_plain_python_writes_the_same_layout(tmp_path: Path) -> None:
    py = tmp_path / "plain.py"
    py.write_text(textwrap.dedent("""
        import tlog
        tlog.config(lr=0.1)
        for i in range(5):
            tlog.log(loss=1.0 / (i + 1), step=i + 1)
        print("ok")
    """))
    res = subprocess.run([sys.executable, str(py)], cwd=tmp_path, capture_output=True, text=True,
                         env=clean_env(TLOG_NAME="plain"), timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "ok\n", "no event lines without a supervisor"
    exp = tmp_path / "training_logs" / "plain"
    rows = csv_rows(exp / "training_metrics.csv")
    assert [float(r["loss"]) for r in rows] == [1.0, 0.5, 1 / 3, 0.25, 0.2]
    assert json.loads((exp / "training_config.json").read_text()) == {"lr": 0.1}
    summary = json.loads((exp / "training_summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 5


def test_a_child_with_another_tlog_is_named_in_one_line_and_still_recorded(runner: Runner) -> None:
    """A training process whose own environment imports another tlog (here: a copy speaking version 0) is
    told apart at its first event: one line on stderr and in training.log; its metrics are recorded."""
    other = runner.cwd / "other"
    shutil.copytree(ROOT / "tlog", other / "tlog", ignore=shutil.ignore_patterns("__pycache__"))
    copy = other / "tlog" / "protocol.py"
    copy.write_text(copy.read_text().replace(f"\nVERSION = {protocol.VERSION}\n", "\nVERSION = 0\n"))
    child = runner.cwd / "child.py"
    child.write_text("import tlog\nfor i in range(3):\n    tlog.log(loss=1.0 / (i + 1), step=i + 1)\n")
    res = runner.run("run", "--name", "other", "--", "sh", "-c",
                     f'PYTHONPATH="$PYTHONPATH:{other}" exec {sys.executable} {child}')
    assert res.returncode == 0, res.stderr
    line = (f"the training process imports the tlog at {other / 'tlog'} (protocol version 0), this tlog speaks "
            f"version {protocol.VERSION}")
    said = [x for x in res.stderr.splitlines() if "protocol version" in x]
    assert len(said) == 1 and line in said[0], res.stderr
    assert line in (runner.exp("other") / "training.log").read_text()
    rows = [e for e in runner.events("other") if e["kind"] == "metrics" and "loss" in e["data"]]
    assert [(e["step"], e["data"]["loss"]) for e in rows] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
