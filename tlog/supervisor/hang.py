"""Hang detection: no progress from a live child for ``--hang-timeout`` seconds.

Progress is any event from the child (a step's metrics, a phase, a checkpoint, a log call): the session
hands each chunk of events to ``observe()``, which reads the clock once and compares a step or two, so
the detector adds next to nothing per step.  One daemon thread sleeps until the deadline
and fires ``on_hang`` once.

Some stretches are legitimately quiet, so they get ``SLOW_FACTOR`` times the timeout: start-up until the
first step or phase (imports, dataset setup), and a phase the script reported itself as validation or
checkpointing (``with tlog.phase("validation"):``) until metrics of a later step show training is back
(validation metrics logged at the same step do not end it).  A long evaluation that says so is not a hang;
one that does not can report progress with ``tlog.log``.

When it fires, the session has the child dump every thread's stack (faulthandler registered on SIGUSR1 by
the hook) and reads it from stderr with ``StackCapture``: a dump has no end marker, so its end is a short
quiet period on stderr.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

from tlog.diagnosis.classify import normalise_phase
from tlog.supervisor.launch import GroupSignaller

SLOW_FACTOR = 4.0
DUMP_QUIET_S = 0.3
DUMP_MAX_S = 3.0
SLOW_PHASES = frozenset({"validation", "checkpoint_saving", "initialization", "model_setup"})


class HangDetector:
    """Calls ``on_hang(idle_s)`` once when no progress came for the allowance; ``stop()`` disarms it."""

    def __init__(self, timeout_s: float, on_hang: Callable[[float], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self.on_hang = on_hang
        self.clock = clock
        self.last = clock()
        self.phase: str | None = None
        self.phase_step: int | None = None
        self.started = False
        self.fired = False
        self._stopped = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tlog-hang", daemon=True)

    def start(self) -> None:
        self.last = self.clock()
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def observe(self, events: list[dict]) -> None:
        """A chunk of the child's events: it moved.  The newest phase or step decides the allowance."""
        self.last = self.clock()
        before = self.allowance()
        self._update(events)
        if self.allowance() < before:
            self._wake.set()  # the sleeping thread must not wait out the longer allowance

    def _update(self, events: list[dict]) -> None:
        for event in events:
            kind = event["kind"]
            if kind == "metrics":
                self.started = True
                step = event.get("step")
                if self.phase is not None and step is not None and (self.phase_step is None or step > self.phase_step):
                    self.phase = None  # a later step: training is back, whatever phase was reported before
            elif kind == "phase":
                self.started = True
                self.phase = normalise_phase(event["data"].get("phase"))
                self.phase_step = event.get("step")

    def allowance(self) -> float:
        """Seconds of silence tolerated now: longer at start-up and in a self-reported slow phase."""
        slow = not self.started or self.phase in SLOW_PHASES
        return self.timeout_s * SLOW_FACTOR if slow else self.timeout_s

    def idle(self) -> float:
        return self.clock() - self.last

    def _run(self) -> None:
        while not self._stopped:
            remaining = self.allowance() - self.idle()
            if remaining <= 0:
                self.fired = True
                self.on_hang(self.idle())
                return
            self._wake.wait(remaining)
            self._wake.clear()


class StackCapture:
    """Collects the stderr lines that follow a stack-dump request until stderr goes quiet."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._lines: list[str] | None = None
        self._last = 0.0

    def begin(self) -> None:
        with self._cond:
            self._lines = []

    def feed(self, lines: list[str]) -> None:
        """stderr lines as they arrive (cheap when no capture is active)."""
        if self._lines is None:
            return
        with self._cond:
            if self._lines is not None:
                self._lines.extend(lines)
                self._last = time.monotonic()
                self._cond.notify_all()

    def collect(self, quiet_s: float, max_s: float) -> str:
        """Wait for the dump: up to ``max_s`` for it to start, then until ``quiet_s`` pass without a line."""
        deadline = time.monotonic() + max_s
        with self._cond:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    break
                if self._lines:
                    wait = self._last + quiet_s - now
                    if wait <= 0:
                        break
                else:
                    wait = deadline - now
                self._cond.wait(min(wait, deadline - now))
            lines, self._lines = self._lines or [], None
        return "\n".join(lines)


class HangWatch:
    """One attempt's hang watch: the detector, the stack-dump request and its capture, then the stop.

    ``fired`` and ``stack`` tell the session, once the child is gone, that it ended as a hang and where
    its main thread was.  The dump is asked from each process that reported itself through tlog's hook
    (its ``meta`` event carries its pid): the trainer, even when it runs under a shell wrapper, every rank
    of a distributed run (one after the other, so their dumps do not interleave; ``stacks`` keeps each
    rank's), and never a process without faulthandler registered on the signal, which the signal would kill
    (torchrun's agent reports no pid).
    """

    def __init__(self, timeout_s: float, signaller: GroupSignaller, say: Callable[[str], None],
                 dump_signal: int = signal.SIGUSR1) -> None:
        self.timeout_s = timeout_s
        self.signaller = signaller
        self.say = say
        self.dump_signal = dump_signal
        self.pids: dict[int, int | None] = {}  # pid -> rank, in the order the processes reported
        self.stack: str | None = None
        self.stacks: dict[int, str] = {}
        self._why_none = ""
        self.capture = StackCapture()
        self.detector = HangDetector(timeout_s, self._on_hang)

    @property
    def fired(self) -> bool:
        return self.detector.fired

    def start(self) -> None:
        self.detector.start()

    def stop(self) -> None:
        self.detector.stop()

    def observe(self, events: list[dict]) -> None:
        for event in events:
            if event["kind"] == "meta" and isinstance(event["data"].get("pid"), int):
                self.pids.setdefault(event["data"]["pid"], event.get("rank"))
        self.detector.observe(events)

    def feed(self, lines: list[str]) -> None:
        self.capture.feed(lines)

    def _on_hang(self, idle_s: float) -> None:
        self.say(f"no progress for {idle_s:.1f} s (--hang-timeout {self.timeout_s:g}): "
                 f"dumping the run's stacks, then stopping it")
        self.stack = self._dump() or f"(no stack dump: {self._why_none})"
        self.signaller.stop()

    def _dump(self) -> str:
        if not self.pids:
            self._why_none = "no process of the run reported through tlog's hook"
            return ""
        parts = []
        for pid, rank in list(self.pids.items()):
            text = self._dump_one(pid)
            if rank is not None and text:
                self.stacks[rank] = text
            if len(self.pids) > 1 and text:
                parts.append(f"--- {'' if rank is None else f'rank {rank}, '}pid {pid} ---\n{text}")
            elif text:
                parts.append(text)
        return "\n".join(parts)

    def _dump_one(self, pid: int) -> str:
        if not descends_from(pid, self.signaller.pid):  # a pid the child named: signal only the run's own
            self._why_none = f"process {pid} named by the run is not one of its processes; not signalled"
            return ""
        self.capture.begin()
        try:
            os.kill(pid, self.dump_signal)
        except (ProcessLookupError, PermissionError):
            self._why_none = f"process {pid} could not be signalled"
            return self.capture.collect(0.0, 0.0)
        self._why_none = f"process {pid} wrote nothing to stderr within {DUMP_MAX_S:g} s"
        return self.capture.collect(DUMP_QUIET_S, DUMP_MAX_S)


def descends_from(pid: int, root: int) -> bool:
    """Whether ``pid`` is ``root`` or one of its descendants (parent links in /proc, setsid or not);
    without /proc, whether it is in ``root``'s process group."""
    for _ in range(64):
        if pid == root:
            return True
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except FileNotFoundError:
            if not os.path.isdir("/proc/self"):
                try:
                    return os.getpgid(pid) == root
                except OSError:
                    return False
            return False
        except OSError:
            return False
        pid = int(stat[stat.rindex(b")") + 2:].split(None, 2)[1])  # after "(comm)": state, ppid
        if pid <= 1:
            return False
    return False
