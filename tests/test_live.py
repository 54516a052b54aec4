"""The live page: deaths between reports are recorded at the step they really happened (the script's own
STEP lines are the truth), with the default ``--log-every`` (a report at step 1, then every 0.5 s)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import Runner, script

from tlog.hook import live
from tlog.supervisor.live import LivePage, merge


def _last_step(stdout: str) -> int:
    return max(int(line.split()[1]) for line in stdout.splitlines() if line.startswith("STEP "))


def _record(runner: Runner, name: str) -> tuple[dict, dict]:
    (err,) = json.loads((runner.exp(name) / "training_errors.json").read_text())
    return err, json.loads((runner.exp(name) / "training_summary.json").read_text())


def test_native_crash_between_reports_is_recorded_at_its_step(runner: Runner) -> None:
    res = runner.run("run", "--name", "segv", script("crash_phase.py"), "segv", "--at", "31", "--steps", "40")
    assert res.returncode == 128 + signal.SIGSEGV, res.stderr
    assert _last_step(res.stdout) == 31
    err, summary = _record(runner, "segv")
    assert (err["step"], err["batch"], err["category"]) == (31, 30, "system")
    assert summary["steps"] == 31 and summary["attempts"][0]["last_step"] == 31
    reported = [e["step"] for e in runner.events("segv") if e["kind"] == "metrics"]
    assert max(reported) < 31, "the page, not a report, knew step 31"


def test_sigkill_between_reports_is_recorded_at_its_step(runner: Runner) -> None:
    res = runner.run("run", "--name", "kill", script("crash_phase.py"), "sigkill", "--at", "54", "--steps", "60")
    assert res.returncode == 128 + signal.SIGKILL, res.stderr
    assert _last_step(res.stdout) == 54
    err, summary = _record(runner, "kill")
    assert (err["step"], err["batch"], err["signal"]) == (54, 53, signal.SIGKILL)
    assert summary["steps"] == 54


def test_hang_between_reports_is_recorded_at_its_step(runner: Runner) -> None:
    res = runner.run("run", "--name", "hang", "--hang-timeout", "3", "--grace", "1", script("crash_phase.py"),
                     "hang", "--at", "21", "--steps", "30")
    assert "READY" in res.stdout and _last_step(res.stdout) == 21
    err, summary = _record(runner, "hang")
    assert (err["step"], err["batch"]) == (21, 20) and err["cause"].startswith("hung")
    assert summary["steps"] == 21


@pytest.mark.parametrize(("signum", "handler"), [(signal.SIGTERM, False), (signal.SIGHUP, True),
                                                 (signal.SIGINT, False)])
def test_a_termination_signal_to_tlog_loses_no_step_the_script_ran(runner: Runner, signum: int,
                                                                   handler: bool) -> None:
    """30 fast steps (one report at step 1, the next not due for 0.5 s), then the script waits: tlog forwards the
    signal, the hook sends the held window before the process dies of it (after the script's own handler)."""
    proc = runner.popen("run", "--no-panel", "--name", "term", script("crash_phase.py"), "hang", "--at", "30",
                        "--steps", "40", *(["--handler"] if handler else []))
    printed = []
    for line in proc.stdout:
        printed.append(line)
        if line.startswith("READY"):
            break
    os.kill(proc.pid, signum)
    out, err = proc.communicate(timeout=60)
    stdout = "".join(printed) + out
    assert proc.returncode == 128 + signum, err
    assert ("HANDLED " + signal.Signals(signum).name in stdout) == handler, "the script's own handler ran"
    assert "hook/signals.py" not in err, "a KeyboardInterrupt's traceback is the script's own"
    with open(runner.exp("term") / "training_metrics.csv", newline="") as f:
        recorded = [int(row["step"]) for row in csv.DictReader(f) if row["loss"]]
    assert _last_step(stdout) == 30 and recorded == list(range(1, 31))


CHAIN = """
import os, signal, sys
from tlog.hook import signals
signal.signal(signal.SIGHUP, signal.SIG_IGN)
signals.install(lambda: print("flushed", flush=True))
assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
assert signals._real_getsignal(signal.SIGINT) is signal.default_int_handler, "KeyboardInterrupt as it was"
mine = lambda s, f: print("mine", s, flush=True)
assert signal.signal(signal.SIGTERM, mine) is signal.SIG_DFL and signal.getsignal(signal.SIGTERM) is mine
os.kill(os.getpid(), signal.SIGHUP)  # ignored: no flush, no death
assert signal.signal(signal.SIGHUP, 1) is signal.SIG_IGN  # SIG_IGN as a plain int
os.kill(os.getpid(), signal.SIGHUP)
os.kill(os.getpid(), signal.SIGTERM)  # flushed, then the script's handler
assert signal.signal(signal.SIGTERM, signal.SIG_DFL) is mine
os.kill(os.getpid(), signal.SIGTERM)  # flushed, then the default action
print("survived", flush=True)
"""


def test_the_hook_chains_in_front_of_the_scripts_handlers() -> None:
    res = subprocess.run([sys.executable, "-c", CHAIN], capture_output=True, text=True, timeout=30)
    assert (res.returncode, res.stdout) == (-signal.SIGTERM, f"flushed\nmine {signal.SIGTERM}\nflushed\n"), res.stderr


def test_page_slots_and_merge() -> None:
    page = LivePage.open()
    assert page is not None
    try:
        assert page.slot(0) is None and page.step() is None
        words = page.words
        base = live.slot_of(1) * live.WORDS
        words[base + live.PID], words[base + live.RANK], words[base + live.STEP] = 123, 1, 7
        words[base + live.EPOCH], words[base + live.BATCH] = live.UNSET, 6
        assert page.of_rank(1) == {"pid": 123, "rank": 1, "step": 7, "epoch": None, "batch": 6}
        assert page.step() == 7 and page.of_rank(0) is None
    finally:
        page.close()
    before = {"step": 5, "epoch": 0, "batch": 4, "phase": "validation", "phase_step": 5}
    assert merge(before, {"step": 9, "epoch": 1, "batch": 2})["phase"] is None, "steps ran after the validation"
    assert merge(before, {"step": 5, "epoch": None, "batch": None}) == before
    assert merge(before, {"step": 3, "epoch": 0, "batch": 2}) == before, "an event ahead of the page wins"
    assert merge(before, None) == before
