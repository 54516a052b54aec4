"""The session and its attempts built directly, with fakes at the boundary (no process): a child is two
pre-filled pipes and an exit code, the writer a list.  The real ``tlog run`` paths are in test_run.py,
test_restart.py and test_distributed.py; these pin the lifetimes: per-attempt state made fresh, restarts
decided by the restart machine, every thread an attempt starts joined when it ends."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tlog import protocol
from tlog.supervisor import hang, launch, restart
from tlog.supervisor.attempt import Attempt, Plan, Seams
from tlog.supervisor.display import QuietDisplay
from tlog.supervisor.journal import Journal
from tlog.supervisor.options import RunOptions
from tlog.supervisor.recovery import Recovery
from tlog.supervisor.session import Session
from tlog.views.viewstate import ViewState

_PIDS = itertools.count(4_000_000)  # above pid_max: a signal sent there reaches nobody


class Writer:
    """The store's side of the journal, kept in lists."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.messages: list[str] = []
        self.output: list[str] = []

    def write_events(self, events: list[dict]) -> None:
        self.events.extend(events)

    def flush(self) -> None:
        pass

    def message(self, text: str) -> None:
        self.messages.append(text)

    def write_output(self, tag: str, lines: list[str]) -> None:
        self.output.extend(lines)

    def position(self) -> dict:
        steps = [e["step"] for e in self.events if e["kind"] == "metrics" and "step" in e]
        return {"step": steps[-1] if steps else None, "epoch": None, "batch": None, "phase": None,
                "phase_step": None}

    def of(self, kind: str, **match: object) -> list[dict]:
        return [e for e in self.events if e["kind"] == kind and all(e["data"].get(k) == v for k, v in match.items())]


class Monitor:
    def __init__(self) -> None:
        self.pid, self.ranks, self.starts = 0, {}, 0

    def start(self) -> None:
        self.starts += 1

    def peaks(self) -> dict:
        return {}

    def recent(self, seconds: float) -> list[dict]:
        return []


class Tree:
    def __init__(self) -> None:
        self.adopted: list[int] = []
        self.stops = 0

    def adopt(self, pid: int) -> None:
        self.adopted.append(pid)

    def stop(self) -> None:
        self.stops += 1

    def kill(self) -> set[int]:
        return set()


class Child:
    """A child without a process: its pipes hold what it printed, closed; it has exited with ``returncode``."""

    def __init__(self, returncode: int, stdout: bytes = b"", stderr: bytes = b"") -> None:
        self.pid = next(_PIDS)
        self.returncode = returncode
        self.stdout, self.stderr = _pipe(stdout), _pipe(stderr)

    def wait(self) -> int:
        return self.returncode


def _pipe(data: bytes):
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return os.fdopen(r, "rb", buffering=0)


def crash(message: str, **context: object) -> bytes:
    return protocol.encode("crash", {"type": "ValueError", "message": message,
                                     "traceback": f"Traceback (most recent call last):\nValueError: {message}"},
                           **context)


def meta(rank: int, pid: int, restart_count: int) -> bytes:
    return protocol.encode("meta", {"pid": pid, "restart_count": restart_count}, rank=rank, world_size=2)


def journal(clock: Callable[[], float] = time.time) -> tuple[Journal, Writer]:
    writer, state = Writer(), ViewState()
    return Journal(writer, QuietDisplay(state), state, clock=clock), writer  # type: ignore[arg-type]


def spawner(children: list[Child]) -> tuple[list[Child], Callable[[launch.ChildSpec], Child]]:
    spawned: list[Child] = []

    def spawn(spec: launch.ChildSpec) -> Child:
        spawned.append(children[len(spawned)])
        return spawned[-1]

    return spawned, spawn


def seams(j: Journal, child: Child) -> Seams:
    return Seams(j, Monitor(), Tree(), launch.SignalRoute(), Recovery(j), restart.Checkpoints(),
                 spawn=spawner([child])[1], oom_kills=lambda: None)  # type: ignore[arg-type]


def test_an_attempt_joins_its_threads_and_judges_the_exit_from_the_child_not_its_events() -> None:
    j, writer = journal()
    s = seams(j, Child(3, stdout=b"hello\n" + protocol.encode("metrics", {"loss": 1.0}, step=7),
                       stderr=crash("bad input")))
    before = set(threading.enumerate())
    attempt = Attempt.start(s, Plan(1, ("train.py",), {}, hang_rule=hang.HangRule(60.0)))
    result = attempt.run()
    assert set(threading.enumerate()) == before and s.tree.stops == 1  # readers and hang watch joined
    assert (result.status, result.exit_code, result.exit["last_step"]) == ("failed", 3, 7)
    assert result.failure is not None and result.error is not None and "bad input" in result.error["cause"]
    assert writer.output == ["hello"] and {e["attempt"] for e in writer.events} == {1}
    s.signals.on_signal(signal.SIGINT)  # the attempt is over: a signal now waits for the next one, if any
    assert s.signals.pending == signal.SIGINT


def test_a_signal_before_the_child_started_is_passed_on_when_it_starts() -> None:
    j, _ = journal()
    s = seams(j, Child(-signal.SIGTERM))  # it died of the signal
    s.signals.on_signal(signal.SIGTERM)
    result = Attempt.start(s, Plan(1, ("train.py",), {})).run()
    assert (result.status, result.exit["forwarded_signal"], result.error) == ("killed", "SIGTERM", None)
    assert result.failure is not None and result.failure.interrupted  # the machine will not restart it


def test_a_torchrun_round_is_a_fresh_attempt_inside_the_same_child() -> None:
    j, writer = journal()
    out = meta(0, 100, 0) + meta(1, 101, 0) + crash("rank 1 failed", rank=1) + meta(0, 200, 1)
    s = seams(j, Child(0, stdout=out))
    attempt = Attempt.start(s, Plan(1, ("torchrun",), {}))
    result = attempt.run()
    first = writer.of("error")[0]
    assert first["attempt"] == 1 and first["data"]["rank"] == 1 and "rank 1 failed" in first["data"]["cause"]
    assert attempt.round.number == 2 and attempt.round.crash is None and attempt.round.workers.pids() == {200: 0}
    assert [(e["attempt"], e["data"]["event"]) for e in writer.of("attempt")] == [(1, "start"), (1, "exit"),
                                                                                  (2, "start")]
    assert result.attempt == 2 and result.status == "finished" and writer.of("meta")[-1]["attempt"] == 2


def session(j: Journal, policy: restart.RestartPolicy) -> Session:
    opts = RunOptions(target=("train.py",), restart_policy=policy, hang_timeout=0)
    notifier = Notifier()
    return Session(opts, ("train.py",), Path("/nonexistent/exp"), j, notifier)  # type: ignore[arg-type]


class Notifier:
    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.on_send = lambda: None

    def send(self, fields: dict) -> None:
        self.sent.append(fields)
        self.on_send()


RESTART = restart.RestartPolicy(on_failure=True, max_restarts=1, restart_on=("all",), backoff_s=0.0)


def test_each_restart_is_a_fresh_attempt_decided_by_the_restart_machine() -> None:
    j, writer = journal()
    run = session(j, RESTART)
    tree = Tree()
    spawned, spawn = spawner([Child(1, stderr=crash("first failure")), Child(1, stderr=b"Killed\n")])
    result = run.supervise(Monitor(), tree, spawn, lambda: None)  # type: ignore[arg-type]
    assert len(spawned) == 2 and tree.adopted == [c.pid for c in spawned]
    errors = [e for e in writer.events if e["kind"] == "error" and "update_of" not in e["data"]]
    assert [e["attempt"] for e in errors] == [1, 2]
    assert writer.of("error", update_of=errors[0]["data"]["id"])[0]["data"]["recovery_successful"] is False
    assert "first failure" not in errors[-1]["data"]["cause"]  # attempt 2 did not inherit attempt 1's crash
    exits = writer.of("attempt", event="exit")
    assert exits[0]["data"]["next"] == "restart" and "giving up after 1 restart" in exits[1]["data"]["stop_reason"]
    assert run.machine.state is restart.State.GAVE_UP and result.attempt == 2
    assert writer.of("restart")[0]["data"]["attempt"] == 2 and run.notifier.sent[0]["status"] == "restarting"


def test_a_signal_during_the_backoff_cancels_the_restart() -> None:
    j, writer = journal()
    run = session(j, RESTART)
    run.notifier.on_send = lambda: run.signals.on_signal(signal.SIGTERM)  # arrives as the restart is announced
    spawned, spawn = spawner([Child(1, stderr=crash("first failure"))])
    result = run.supervise(Monitor(), Tree(), spawn, lambda: None)  # type: ignore[arg-type]
    assert len(spawned) == 1 and run.machine.state is restart.State.FAILED and result.attempt == 1
    assert writer.of("attempt", event="stop")[0]["data"]["stop_reason"] == "interrupted while waiting to restart"


def test_the_next_attempt_past_the_failing_step_amends_the_failure_as_recovered() -> None:
    t0 = 1_800_000_000.0
    j, writer = journal(clock=lambda: t0)  # the failure is recorded at t0
    run = session(j, RESTART)
    _, spawn = spawner([Child(1, stdout=protocol.encode("metrics", {"loss": 1.0}, step=3), stderr=crash("x")),
                        Child(0, stdout=protocol.encode("metrics", {"loss": 0.5}, step=4, t=t0 + 2.5))])
    assert run.supervise(Monitor(), Tree(), spawn, lambda: None).status == "finished"  # type: ignore[arg-type]
    update = next(e for e in writer.events if e["kind"] == "error" and "update_of" in e["data"])
    assert (update["attempt"], update["data"]["recovery_successful"], update["data"]["recovery_time"]) == (2, True, 2.5)
    assert "attempt 2 got past step 3: recovered from the attempt 1 failure in 2.5 s" in writer.messages
