"""The run's whole process tree ends with it: tlog killed by SIGKILL, Ctrl-C, a normal exit; setsid
descendants and orphans included.  The pids come from the script itself (a file it writes)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.conftest import Runner, script
from tlog.supervisor import limits


def _alive(pid: int) -> bool:
    """Running (a zombie is dead: it only waits to be reaped by whoever is its parent now)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in (b"Z", b"X")


def _until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def _start(runner: Runner, mode: str, *args: str) -> tuple:
    pidfile = runner.cwd / "pids"
    proc = runner.popen("run", "--name", mode, *args, script("leftovers.py"), str(pidfile), mode)
    if not _until(pidfile.exists, 60):
        proc.kill()
        raise AssertionError(proc.communicate(timeout=30))
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 5 and all(_alive(p) for p in pids[1:])
    log = runner.exp(mode) / "training.log"
    if mode == "wait":  # tlog has seen the three new sessions (its scan, every second) and told the guardian
        assert _until(lambda: all(f"process {p} of the run started a session" in log.read_text()
                                  for p in pids[2:]), 10), log.read_text()
    return proc, pids


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _unified(pid: int) -> str | None:
    with open(f"/proc/{pid}/cgroup") as f:
        return next((line[3:].strip() for line in f if line.startswith("0::")), None)


def test_sigkill_of_tlog_takes_the_whole_run_with_it(runner: Runner) -> None:
    proc, pids = _start(runner, "wait")
    base = limits.unified_dir(proc.pid)
    group = base / f"tlog-{proc.pid}-1" if base is not None else None
    try:
        if group is not None and group.is_dir():  # a writable cgroup v2 here: every process of the run is in it
            assert {_unified(p) for p in pids} == {f"{_unified(proc.pid).rstrip('/')}/{group.name}"}
        proc.kill()
        proc.wait(10)
        assert _until(lambda: not any(_alive(p) for p in pids), 2.0), [p for p in pids if _alive(p)]
        assert group is None or _until(lambda: not group.exists(), 2.0), "the guardian removed the cgroup"
    finally:
        _kill_all(pids)


def test_ctrl_c_with_descendants_holding_the_pipe_returns_within_grace(runner: Runner) -> None:
    proc, pids = _start(runner, "wait", "--grace", "2")
    try:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - t0
        assert proc.returncode == 128 + signal.SIGINT, err
        assert elapsed < 2 + 1, elapsed
        assert not [p for p in pids if _alive(p)]
    finally:
        _kill_all(pids)


def test_exit_0_with_a_background_holder_returns_promptly_and_leaves_nothing(runner: Runner) -> None:
    proc, pids = _start(runner, "exit")
    t0 = time.monotonic()  # the child exits right after writing the pids (tlog's start-up under load is not timed)
    try:
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "process(es) of the run outlived it and held its output open; killed" in err
        assert not [p for p in pids if _alive(p)]
        assert time.monotonic() - t0 < 10  # before: ~6 s after the child's exit alone
    finally:
        _kill_all(pids)
    log = (Path(runner.exp("exit")) / "training.log").read_text()
    assert "outlived it" in log


def test_hooked_descendants_die_with_tlog_even_without_its_guardian(runner: Runner) -> None:
    """``pkill -9 -f tlog`` takes the guardian too: the Python processes (the hook's lifeline) still go."""
    proc, pids = _start(runner, "wait")
    child, python_grandchild = pids[0], pids[3]
    try:
        guardians = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == proc.pid
                     and int(p) != child and b"guardian" in _cmdline(int(p))]
        assert len(guardians) == 1
        os.kill(guardians[0], signal.SIGKILL)
        proc.kill()
        proc.wait(10)
        assert _until(lambda: not _alive(child) and not _alive(python_grandchild), 2.0)
    finally:
        _kill_all(pids)


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
