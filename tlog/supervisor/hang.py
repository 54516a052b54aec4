"""Hang detection, on by default: no progress from a live child for longer than the run itself makes
plausible.

Progress is any event from the child (metrics, a phase, a checkpoint, a log call) and any move of the step
on the live page (``tlog.hook.live``: the probe stores each step there, so a run reporting every half second
or every 1,000 steps still shows each step), polled every ``POLL_S``; before the first step the script's
output counts too (downloads and compiles print).  ``HangRule`` says how long silence may last:

- ``--hang-timeout S``: S seconds; start-up until the first step or phase, and a phase the script reported
  as validation or checkpointing (until a later step), get ``SLOW_FACTOR`` times S.
- by default (calibrated by the run): ``STARTUP_S`` until the first step (imports, data, compile); then
  ``FACTOR`` times the slowest step seen so far (from the second step on), never under ``FLOOR_S``;
  inside an announced slow phase (validation, checkpoint saving, ...), ``FACTOR`` times the longest such
  phase seen before, never under the floor, and ``STARTUP_S`` for its first occurrence.  A step's time
  is the time between two moves of the step divided by the steps moved; the time across a slow phase is
  that phase's, not a step's.  A run whose steps slow down gradually raises its own limit as it goes; one
  that stops dead is caught after ``FACTOR`` of its slowest steps (or the floor).  ``TLOG_HANG_FLOOR_S``
  sets the floor (tests use a small one).
- ``--hang-timeout 0``: off.

Once a process of the run has begun to exit (its atexit handlers ran: the page says so), the interpreter's
teardown, which is silent and can be slow, gets the start-up allowance.

When it fires, the session has the child dump every thread's stack (faulthandler registered by the hook on
``STACK_SIGNAL``: a real-time signal, SIGUSR1 where there is none) and reads it from stderr with
``StackCapture``: a dump has no end marker, so its end is a short quiet period on stderr.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tlog import protocol
from tlog.diagnosis.classify import normalise_phase
from tlog.hook.crash import signal_number
from tlog.supervisor.launch import GroupSignaller
from tlog.supervisor.live import LivePage

SLOW_FACTOR = 4.0
DUMP_QUIET_S = 0.3
DUMP_MAX_S = 3.0
SLOW_PHASES = frozenset({"validation", "checkpoint_saving", "initialization", "model_setup"})
STARTUP_S = 1800.0
FACTOR = 10.0
FLOOR_S = 300.0
POLL_S = 0.25
# faulthandler dumps every thread's stack on it in a hooked child (hang detection is on by default): a real-time
# signal where there is one, so that a scheduler's SIGUSR1 (Slurm's --signal) keeps its own meaning
STACK_SIGNAL_NAME = "SIGRTMIN+3" if hasattr(signal, "SIGRTMIN") else "SIGUSR1"
STACK_SIGNAL: int = signal_number(STACK_SIGNAL_NAME) or signal.SIGUSR1


@dataclass(frozen=True)
class HangRule:
    """How long silence may last: a fixed ``timeout_s`` (``--hang-timeout S``), or calibrated (None)."""

    timeout_s: float | None = None
    startup_s: float = STARTUP_S
    factor: float = FACTOR
    floor_s: float = FLOOR_S

    @classmethod
    def of(cls, hang_timeout: float | None) -> HangRule | None:
        """From ``--hang-timeout``: None (the default) calibrates, 0 turns detection off (None returned)."""
        if hang_timeout is not None:
            return cls(hang_timeout) if hang_timeout > 0 else None
        floor = os.environ.get(protocol.ENV_HANG_FLOOR_S, "")
        try:
            return cls(floor_s=float(floor)) if floor and float(floor) > 0 else cls()
        except ValueError:
            return cls()

    def describe(self) -> str:
        if self.timeout_s is not None:
            return f"--hang-timeout {self.timeout_s:g}"
        return f"{self.factor:g} x the slowest step, at least {self.floor_s:g} s; --hang-timeout S fixes it"


class HangDetector:
    """Calls ``on_hang(idle_s)`` once when no progress came for the allowance; ``stop()`` disarms it.

    ``live`` is the attempt's live page (its ``step()``, None while nothing is stored, and ``exiting()``);
    ``on_limit`` hears each new allowance (the panel shows it)."""

    def __init__(self, rule: HangRule | float, on_hang: Callable[[float], None],
                 clock: Callable[[], float] = time.monotonic, live: LivePage | None = None,
                 on_limit: Callable[[float], None] | None = None) -> None:
        self.rule = rule if isinstance(rule, HangRule) else HangRule(rule)
        self.on_hang = on_hang
        self.clock = clock
        self.live = live
        self.exiting = False  # the child began to exit: teardown is silent, and no step comes any more
        self.on_limit = on_limit
        self.last = clock()
        self.phase: str | None = None
        self.phase_step: int | None = None
        self.phase_t: float | None = None
        self.phase_longest: dict[str, float] = {}
        self.started = False
        self.step: int | None = None  # the furthest step seen, and when it was seen
        self.step_t: float | None = None
        self.slowest: float | None = None  # seconds of the slowest step seen
        self.fired = False
        self._shown: float | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tlog-hang", daemon=True)

    @property
    def timeout_s(self) -> float | None:
        return self.rule.timeout_s

    def start(self) -> None:
        self.last = self.clock()
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(2.0)  # it reads the live page, which the session closes next

    def observe(self, events: list[dict]) -> None:
        """A chunk of the child's events: it moved.  The newest phase or step decides the allowance."""
        with self._lock:
            now = self.clock()
            self.last = now
            before = self.allowance()
            self._update(events, now)
            shrunk = self.allowance() < before
        if shrunk:
            self._wake.set()  # the sleeping thread must not wait out the longer allowance

    def output(self) -> None:
        """The script printed: before its first step that is progress (downloads, compiles)."""
        if not self.started:
            self.last = self.clock()

    def _update(self, events: list[dict], now: float) -> None:
        for event in events:
            kind = event["kind"]
            if kind == "metrics":
                step = event.get("step")
                if isinstance(step, int):
                    self._stepped(step, now)
                else:
                    self.started = True
            elif kind == "phase":
                self.started = True
                self.phase = normalise_phase(event["data"].get("phase"))
                self.phase_step = event.get("step")
                self.phase_t = now if self.phase in SLOW_PHASES else None

    def _stepped(self, step: int, now: float) -> None:
        """The step moved to ``step`` (an event's or the live page's): time the steps, end a slow phase."""
        self.started = True
        if self.step is not None and step <= self.step:
            return
        if self.phase is not None and (self.phase_step is None or step > self.phase_step):
            if self.phase_t is not None:  # a slow phase is over: its length is learned, not a step's
                took = now - self.phase_t
                self.phase_longest[self.phase] = max(took, self.phase_longest.get(self.phase, 0.0))
                self.step_t = now
            self.phase = self.phase_t = None
        elif self.step is not None and self.step_t is not None:
            per = (now - self.step_t) / (step - self.step)
            self.slowest = per if self.slowest is None or per > self.slowest else self.slowest
        self.step, self.step_t, self.last = step, now, now

    def allowance(self) -> float:
        """Seconds of silence tolerated now (see the module's docstring)."""
        rule = self.rule
        slow = self.phase in SLOW_PHASES or self.exiting
        if rule.timeout_s is not None:
            return rule.timeout_s * SLOW_FACTOR if slow or not self.started else rule.timeout_s
        if not self.started:
            return rule.startup_s
        if slow:
            longest = None if self.exiting or self.phase is None else self.phase_longest.get(self.phase)
            return rule.startup_s if longest is None else max(rule.floor_s, rule.factor * longest)
        if self.slowest is None:  # no step timed yet (the first one may be compiling)
            return rule.startup_s
        return max(rule.floor_s, rule.factor * self.slowest)

    def idle(self) -> float:
        return self.clock() - self.last

    def _poll(self) -> None:
        if self.live is None:
            return
        try:
            step = self.live.step()
            self.exiting = self.exiting or self.live.exiting()
        except (ValueError, BufferError):  # the page was closed: the attempt is over
            return
        if step is not None and (self.step is None or step > self.step):
            with self._lock:
                self._stepped(step, self.clock())

    def _show(self, limit: float) -> None:
        if self.on_limit is not None and limit != self._shown:
            self._shown = limit
            self.on_limit(limit)

    def _run(self) -> None:
        while not self._stopped:
            self._poll()
            with self._lock:
                allowance = self.allowance()
                remaining = allowance - self.idle()
            self._show(allowance)
            if remaining <= 0:
                self.fired = True
                self.on_hang(self.idle())
                return
            self._wake.wait(min(remaining, POLL_S) if self.live is not None else remaining)
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

    def __init__(self, rule: HangRule, signaller: GroupSignaller, say: Callable[[str], None],
                 dump_signal: int = STACK_SIGNAL, live: LivePage | None = None,
                 on_limit: Callable[[float], None] | None = None) -> None:
        self.rule = rule
        self.signaller = signaller
        self.say = say
        self.dump_signal = dump_signal
        self.pids: dict[int, int | None] = {}  # pid -> rank, in the order the processes reported
        self.stack: str | None = None
        self.stacks: dict[int, str] = {}
        self._why_none = ""
        self.capture = StackCapture()
        self.detector = HangDetector(rule, self._on_hang, live=live, on_limit=on_limit)

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

    def feed(self, stream: str, lines: list[str]) -> None:
        """The script's output: on stderr the stack dump once asked for; before the first step, a sign of life."""
        if stream == "stderr":
            self.capture.feed(lines)
        self.detector.output()

    def _on_hang(self, idle_s: float) -> None:
        rule = self.rule.describe() if self.rule.timeout_s is not None else \
            f"limit {self.detector.allowance():.3g} s: {self.rule.describe()}"
        self.say(f"no progress for {idle_s:.1f} s ({rule}): dumping the run's stacks, then stopping it")
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
        return without_lifeline(self.capture.collect(DUMP_QUIET_S, DUMP_MAX_S))


def without_lifeline(dump: str) -> str:
    """faulthandler lists every thread; the hook's lifeline thread (tlog.hook.lifeline) is tlog's, not the run's."""
    blocks = re.split(r"\n(?=(?:Current thread|Thread) 0x)", dump)
    return "\n".join(b for b in blocks if "tlog/hook/lifeline.py" not in b)


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
