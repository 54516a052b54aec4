"""Hangs: the detector and the stack capture alone, the child's dump signal, then real hung runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import psutil
from conftest import ROOT, Runner, clean_env, script

from tlog.supervisor.hang import FACTOR, SLOW_FACTOR, STARTUP_S, HangDetector, HangRule, StackCapture


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def metrics(step: int, src: str | None = "auto") -> dict:
    return {"kind": "metrics", "step": step, "src": src, "data": {"loss": 1.0}}


def phase(name: str, step: int) -> dict:
    return {"kind": "phase", "step": step, "data": {"phase": name}}


def test_allowance_longer_at_start_up_and_in_reported_slow_phases() -> None:
    clock = Clock()
    det = HangDetector(2.0, lambda idle: None, clock=clock)
    assert det.allowance() == 2.0 * SLOW_FACTOR, "imports and setup before the first step"
    det.observe([{"kind": "meta", "data": {"pid": 1}}])
    assert det.allowance() == 8.0, "the hook's own start-up event is not a step"
    clock.now += 3
    det.observe([metrics(1)])
    assert (det.allowance(), det.idle()) == (2.0, 0.0)
    det.observe([metrics(2), phase("eval", 2)])
    assert (det.phase, det.allowance()) == ("validation", 8.0), "aliases normalised"
    det.observe([metrics(2, src=None)])
    assert det.allowance() == 8.0, "validation metrics at the same step do not end the phase"
    det.observe([metrics(3)])
    assert det.allowance() == 2.0, "a later step: training is back"
    det.observe([phase("training", 3), phase("checkpoint", 3)])
    assert det.allowance() == 8.0, "the newest phase counts"
    clock.now += 5
    assert det.idle() == 5.0


def test_fires_once_after_the_allowance_and_not_after_stop() -> None:
    fired: list[float] = []
    det = HangDetector(0.05, fired.append)
    det.start()
    det.observe([metrics(1)])  # shrinks the allowance: the sleeping thread is woken to re-arm
    time.sleep(0.5)
    assert len(fired) == 1 and fired[0] >= 0.05 and det.fired
    quiet: list[float] = []
    stopped = HangDetector(0.05, quiet.append)
    stopped.start()
    stopped.stop()
    time.sleep(0.3)
    assert quiet == [] and not stopped.fired


def test_progress_keeps_postponing_the_hang() -> None:
    fired: list[float] = []
    det = HangDetector(0.3, fired.append)
    det.observe([metrics(1)])
    det.start()
    for step in range(2, 10):
        time.sleep(0.1)
        det.observe([metrics(step)])
    assert fired == []
    det.stop()


def test_stack_capture_ends_on_a_quiet_period() -> None:
    cap = StackCapture()
    cap.feed(["before the request is ignored"])
    cap.begin()

    def dump() -> None:
        for line in ("Thread 0x1 (most recent call first):", '  File "a.py", line 3 in f', ""):
            time.sleep(0.02)
            cap.feed([line])

    threading.Thread(target=dump).start()
    started = time.monotonic()
    text = cap.collect(0.2, 5.0)
    assert text == 'Thread 0x1 (most recent call first):\n  File "a.py", line 3 in f\n'
    assert time.monotonic() - started < 2.0
    cap.feed(["after the capture is ignored"])
    cap.begin()
    assert cap.collect(0.05, 0.2) == "", "nothing came: empty after max_s"


def test_hook_dumps_stacks_on_the_signal_without_dying() -> None:
    code = ("import os, signal, time; from tlog.hook.crash import register_stack_dump as register\n"
            "assert register('SIGUSR1') and not register('NOPE') and not register(None)\n"
            "def waiting_here():\n    os.kill(os.getpid(), signal.SIGUSR1); time.sleep(0.2)\n"
            "waiting_here(); print('alive')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert res.returncode == 0 and res.stdout == "alive\n", res.stderr
    assert "Current thread 0x" in res.stderr and "line 4 in waiting_here" in res.stderr


def _errors(runner: Runner, name: str) -> list[dict]:
    return json.loads((runner.exp(name) / "training_errors.json").read_text())


def _summary(runner: Runner, name: str) -> dict:
    return json.loads((runner.exp(name) / "training_summary.json").read_text())


def test_sleep_in_the_loop_is_a_hang_with_the_main_thread_stack(runner: Runner) -> None:
    started = time.monotonic()
    res = runner.run("run", "--name", "sleepy", "--grace", "1", "--hang-timeout", "2.5", "--log-every", "1",
                     script("crash_phase.py"), "hang")
    assert res.returncode == 143, res.stderr  # stopped with SIGTERM
    assert "READY" in res.stdout
    assert "[tlog] no progress for 2." in res.stderr and "(--hang-timeout 2.5): dumping the run's stacks" in res.stderr
    err = _errors(runner, "sleepy")[0]
    assert (err["category"], err["rule"], err["transient"], err["step"], err["signal"]) == \
        ("system", "hang_other", True, 3, 15)
    assert err["cause"].startswith("hung: no progress") and "crash_phase.py" in err["cause"]
    assert err["traceback"].startswith("Current thread 0x")
    assert 'crash_phase.py", line' in err["traceback"] and "in <module>" in err["traceback"]
    summary = _summary(runner, "sleepy")
    assert (summary["status"], summary["outcome"]) == ("hung", "hung")
    assert time.monotonic() - started < 40


def test_blocked_dataloader_worker_is_a_data_loading_hang(runner: Runner) -> None:
    res = runner.run("run", "--name", "stall", "--grace", "1", "--hang-timeout", "2.5", script("crash_phase.py"),
                     "stall")
    assert res.returncode == 143, res.stderr
    err = _errors(runner, "stall")[0]
    assert (err["category"], err["rule"], err["phase"]) == ("data_loading", "hang_dataloader", "data_loading")
    assert "stuck waiting for DataLoader workers" in err["cause"] and "_try_get_data" in err["cause"]
    assert "torch/utils/data/dataloader.py" in err["traceback"]
    assert _summary(runner, "stall")["status"] == "hung"
    pid = next(e["data"]["pid"] for e in runner.events("stall") if e["kind"] == "attempt")
    leftovers = [p for p in psutil.process_iter(["pid"]) if _in_group(p, pid)]
    assert leftovers == [], "the blocked worker died with the group"


def _in_group(proc: psutil.Process, pgid: int) -> bool:
    try:
        return proc.pid != pgid and os.getpgid(proc.pid) == pgid and proc.status() != "zombie"
    except (ProcessLookupError, psutil.Error):
        return False


def test_a_hang_is_restarted_like_any_transient_failure(runner: Runner) -> None:
    res = runner.run("run", "--name", "again", "--grace", "0.5", "--hang-timeout", "0.8", "--restart", "on-failure",
                     "--backoff", "0.05", script("crash_loop.py"), "--hang-at", "2")
    assert res.returncode == 0, res.stderr
    assert "restarting (attempt 2 of 4) in 0.05 s: hung: no progress at step 2" in res.stderr
    err = _errors(runner, "again")[0]
    assert (err["category"], err["step"], err["recovery_attempted"], err["recovery_successful"]) == \
        ("system", 2, True, True)
    summary = _summary(runner, "again")
    assert (summary["status"], summary["outcome"]) == ("finished", "restarted-then-finished")
    assert [a["status"] for a in summary["attempts"]] == ["hung", "finished"]


def test_reported_validation_longer_than_the_timeout_is_not_a_hang(runner: Runner) -> None:
    res = runner.run("run", "--name", "eval", "--hang-timeout", "0.6", script("crash_loop.py"), "--eval-sleep",
                     "1.5")
    assert res.returncode == 0, res.stderr
    assert "no progress" not in res.stderr
    assert _errors(runner, "eval") == [] and _summary(runner, "eval")["status"] == "finished"


def test_a_command_without_the_hook_still_ends_as_a_hang(runner: Runner) -> None:
    res = runner.run("run", "--name", "cmd", "--grace", "0.5", "--hang-timeout", "0.3", "--", "sleep", "30")
    assert res.returncode == 143, res.stderr
    err = _errors(runner, "cmd")[0]
    assert (err["category"], err["rule"], err["signal"]) == ("system", "hang_other", 15)
    assert err["traceback"] == "(no stack dump: no process of the run reported through tlog's hook)"
    assert _summary(runner, "cmd")["status"] == "hung"


def test_on_a_hang_only_the_runs_own_processes_are_signalled(runner: Runner) -> None:
    """A child naming a foreign pid in its meta event: that process is left alone (SIGUSR1 would kill sleep)."""
    foreign = subprocess.Popen(["sleep", "60"])
    try:
        line = json.dumps({"kind": "meta", "data": {"pid": foreign.pid}})
        res = runner.run("run", "--name", "foreign", "--grace", "0.5", "--hang-timeout", "0.5", "--",
                         "sh", "-c", f"echo '@tlog {line}'; exec sleep 30")
        assert res.returncode != 0 and "no progress for" in res.stderr
        errors = (runner.exp("foreign") / "training_errors.json").read_text()
        assert f"process {foreign.pid} named by the run is not one of its processes; not signalled" in errors
        assert foreign.poll() is None, "a process outside the run's tree was signalled"
    finally:
        foreign.kill()
        foreign.wait()


# -- on by default, calibrated by the run (no --hang-timeout); the floor lowered to 3 s (a loaded machine can
# stall a process for a second or two, at exit too), the rule otherwise as shipped: 10 x the slowest step ---

FLOOR = {"TLOG_HANG_FLOOR_S": "3"}


def _default_run(runner: Runner, name: str, *args: str) -> subprocess.CompletedProcess:
    return runner.run("run", "--name", name, "--grace", "1", script("paced.py"), *args, env=clean_env(**FLOOR))


def test_default_detection_catches_a_hang_after_fast_steps(runner: Runner) -> None:
    res = _default_run(runner, "auto", "--sleep", "0.3", "--hang-at", "10")
    assert res.returncode == 143 and "READY" in res.stdout, res.stderr
    assert "x the slowest step, at least 3 s; --hang-timeout S fixes it): dumping the run's stacks" in res.stderr
    last = max(float(line.split()[2]) for line in res.stdout.splitlines() if line.startswith("STEP "))
    (err,) = _errors(runner, "auto")
    assert (err["step"], err["cause"][:4]) == (10, "hung") and _summary(runner, "auto")["status"] == "hung"
    fired = next(e["t"] for e in runner.events("auto") if e["kind"] == "error")
    assert 3.0 <= fired - last < 15.0, "caught after ~10 steps' time (10 x ~0.3 s, floor 3 s), not 30 min"


def test_default_detection_lets_a_run_slow_down_five_fold(runner: Runner) -> None:
    res = _default_run(runner, "slowing", "--steps", "14", "--sleep", "0.1", "--to", "0.5")
    assert res.returncode == 0 and "DONE" in res.stdout, res.stderr
    assert "no progress" not in res.stderr and _errors(runner, "slowing") == []


def test_default_detection_lets_an_announced_validation_run_long(runner: Runner) -> None:
    res = _default_run(runner, "val", "--steps", "6", "--sleep", "0.05", "--val-at", "3", "--val-s", "4")
    assert res.returncode == 0 and "DONE" in res.stdout, res.stderr
    assert "no progress" not in res.stderr and _errors(runner, "val") == []
    assert "validation" in [e["data"]["phase"] for e in runner.events("val") if e["kind"] == "phase"]


def test_hang_timeout_zero_turns_detection_off() -> None:
    assert HangRule.of(0) is None and HangRule.of(2.5) == HangRule(2.5) and HangRule.of(None) == HangRule()


def test_calibrated_allowance_follows_the_slowest_step_and_each_phase() -> None:
    clock = Clock()
    det = HangDetector(HangRule(floor_s=1.0), lambda idle: None, clock=clock)
    assert det.allowance() == STARTUP_S, "start-up: data, compile"
    det.observe([metrics(1)])
    assert det.allowance() == STARTUP_S, "one step: its time is not known yet"
    for step, took in ((2, 0.2), (3, 0.5), (4, 0.3)):
        clock.now += took
        det.observe([metrics(step)])
    assert det.allowance() == FACTOR * 0.5, "the slowest step so far"
    clock.now += 1.0
    det.observe([metrics(8)])  # four steps in 1 s: 0.25 s each
    assert det.allowance() == FACTOR * 0.5
    det.observe([phase("validation", 8)])
    assert det.allowance() == STARTUP_S, "a first validation: no length known"
    clock.now += 7.0
    det.observe([metrics(9)])
    assert (det.phase, det.allowance()) == (None, FACTOR * 0.5), "the validation's 7 s are not a step's"
    det.observe([phase("validation", 9)])
    assert det.allowance() == FACTOR * 7.0, "learned from its own length"
    tiny = HangDetector(HangRule(floor_s=60.0), lambda idle: None, clock=clock)
    tiny.observe([metrics(1)])
    clock.now += 0.01
    tiny.observe([metrics(2)])
    assert tiny.allowance() == 60.0, "never under the floor"
    tiny.exiting = True  # the page says the child's atexit ran
    assert tiny.allowance() == STARTUP_S, "the interpreter's teardown is not a hang"
