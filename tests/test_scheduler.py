"""Under Slurm, the scheduler's SIGTERM / SIGUSR1 to tlog is a preemption or the time limit, not a kill."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from conftest import Runner, clean_env, script


def _held(runner: Runner, name: str, env: dict, out) -> subprocess.Popen:
    return runner.popen("run", "-q", "--name", name, "--restart", "on-failure", "--restart-on", "all",
                        "--backoff", "0", "--notify", f"{sys.executable} {script('notify_env.py')} {out}",
                        script("steps.py"), "--hold-at", "2", env=env)


def _wait_ready(runner: Runner, name: str, proc: subprocess.Popen) -> None:
    log = runner.exp(name) / "training.log"
    deadline = time.monotonic() + 60
    while not (log.is_file() and "READY" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)


def test_slurm_signals_are_preemption_and_time_limit(runner: Runner) -> None:
    out = runner.cwd / "notified.jsonl"
    cases = {"pre": (clean_env(SLURM_JOB_ID="4242"), signal.SIGTERM),
             "limit": (clean_env(SLURM_JOB_ID="4243", SLURM_JOB_END_TIME=str(int(time.time()) + 60)),
                       signal.SIGUSR1)}
    procs = {name: _held(runner, name, env, out) for name, (env, _) in cases.items()}
    for name, proc in procs.items():
        _wait_ready(runner, name, proc)
        proc.send_signal(cases[name][1])
    for proc in procs.values():
        proc.communicate(timeout=60)
    for name, want in (("pre", "preempted"), ("limit", "time-limit")):
        summary = json.loads((runner.exp(name) / "training_summary.json").read_text())
        assert summary["status"] == want, summary["attempts"]
        assert summary["restarts"] == 0  # --restart on-failure: a preemption is not a crash
    assert procs["pre"].returncode == 128 + signal.SIGTERM
    listed = json.loads(runner.run("ls", "--status", "preempted", "--json").stdout)
    assert [row["experiment"] for row in listed] == ["pre"]
    notified = {json.loads(line)["TLOG_EXPERIMENT"]: json.loads(line)["TLOG_STATUS"]
                for line in out.read_text().splitlines()}
    assert notified == {"pre": "preempted", "limit": "time-limit"}


def test_without_slurm_a_sigterm_is_a_kill(runner: Runner) -> None:
    out = runner.cwd / "notified.jsonl"
    proc = _held(runner, "plain", clean_env(), out)
    _wait_ready(runner, "plain", proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert json.loads((runner.exp("plain") / "training_summary.json").read_text())["status"] == "killed"
