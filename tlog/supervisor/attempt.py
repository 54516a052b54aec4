"""One attempt: a child process tree, from its spawn to its judged exit, and the threads that watch it.

Lifetime.  ``Attempt.start`` spawns the child; ``run`` watches it to its exit and returns how it ended
(``AttemptResult``); the attempt is then done.  Its per-attempt state (``Round``) is made fresh, never
reset: once for the child, and again each time torchrun restarts its workers inside that child, since each
of torchrun's rounds is an attempt of its own (``_next_round``).

Threads.  The attempt starts and joins its own: the two pipe readers (``ingest``; given up on after a bound
when a process outside the run holds a pipe open), the hang detector, the process-tree scan (``RunTree``
adopts the child and is stopped with it) and the signaller's grace timer (cancelled).  The reader callbacks
(``_on_events``, ``_on_output``) run on the reader threads, everything else on the main thread.  The
resource monitor's sampler belongs to the run: the attempt points it at its child.

Seams.  What the attempt uses of the run and of the machine comes in through ``Seams`` (spawn, the journal,
the monitor, the process tree, the signal route, the OOM counter), so a test builds one with fakes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tlog import protocol
from tlog.diagnosis import failure
from tlog.supervisor import hang, launch, options, ranks, restart
from tlog.supervisor.ingest import drain, open_readers
from tlog.supervisor.journal import Journal
from tlog.supervisor.limits import oom_kill_count
from tlog.supervisor.live import LivePage, merge
from tlog.supervisor.recovery import Recovery
from tlog.supervisor.scrape import Scraper

MEMORY_TIMELINE_S = 30.0


class Sampler(Protocol):
    """The run's resource monitor (``monitor.Monitor``), as an attempt points it at its child and reads it."""

    pid: int
    ranks: dict[int, int]

    def start(self) -> None: ...

    def peaks(self) -> dict[str, Any]: ...

    def recent(self, seconds: float) -> list[dict[str, Any]]: ...


class Tree(Protocol):
    """The run's process tree (``proctree.RunTree``): adopts each attempt's child, kills what is left."""

    def adopt(self, pid: int) -> None: ...

    def stop(self) -> None: ...

    def kill(self) -> set[int]: ...


@dataclass(frozen=True)
class Seams:
    """Everything an attempt uses outside itself; the run-wide objects are the session's."""

    journal: Journal
    monitor: Sampler
    tree: Tree
    signals: launch.SignalRoute
    recovery: Recovery
    checkpoints: restart.Checkpoints
    scraper: Scraper | None = None
    spawn: Callable[[launch.ChildSpec], subprocess.Popen] = launch.spawn
    oom_kills: Callable[[], int | None] = oom_kill_count


@dataclass(frozen=True)
class Plan:
    """What the session decided to start: the attempt's number, command, environment (without the live
    page's, which the attempt adds), checkpoint, and the rules it runs under."""

    number: int
    argv: tuple[str, ...]
    env: dict[str, str]
    resume: restart.ResumePoint | None = None
    max_attempts: int = 1
    grace: float = 10.0
    hang_rule: hang.HangRule | None = None


@dataclass
class Round:
    """One attempt's own state, made fresh for each and never reset: its number, the ranks heard from (a
    distributed run) and the last crash event a process of the run reported."""

    number: int
    workers: ranks.Workers = field(default_factory=ranks.Workers)
    crash: dict | None = None


@dataclass(frozen=True)
class AttemptResult:
    """How an attempt ended: what the restart machine hears (``failure``: None when it finished) and its exit
    event's data, which the session completes with the machine's decision."""

    attempt: int
    exit_code: int
    signal: int | None
    status: str
    error: dict | None
    failure: restart.Failure | None
    exit: dict[str, Any]


class Attempt:
    """One child and its watchers; see the module docstring for lifetimes and threads."""

    def __init__(self, seams: Seams, plan: Plan, page: LivePage | None, proc: subprocess.Popen,
                 oom_before: int | None) -> None:
        self.seams = seams
        self.journal = seams.journal
        self.plan = plan
        self.page = page  # one per attempt: a restart never shows the steps of the attempt before
        self.proc = proc
        self.oom_before = oom_before
        self.round = Round(plan.number)
        self.signaller = launch.GroupSignaller(proc.pid, plan.grace, self.journal.say, seams.tree.kill)
        self.hangs = None if plan.hang_rule is None else hang.HangWatch(
            plan.hang_rule, self.signaller, self.journal.say, live=page, on_limit=self.journal.state.set_hang_limit)
        self.readers = open_readers(proc, self._on_events, self._on_output, self.journal.display,
                                    self.journal.writer.flush)  # started by run, joined (bounded) before it ends

    @classmethod
    def start(cls, seams: Seams, plan: Plan) -> Attempt:
        """Spawn the child (a LaunchError when it cannot start) with the attempt's own live page."""
        seams.journal.attempt = plan.number
        oom_before = seams.oom_kills()
        page = LivePage.open()
        env = {**plan.env, **(page.env if page is not None else {})}
        try:
            proc = seams.spawn(launch.ChildSpec(plan.argv, launch.child_env(env)))
        except BaseException:
            if page is not None:
                page.close()
            raise
        return cls(seams, plan, page, proc, oom_before)

    def run(self) -> AttemptResult:
        """Watch the child to its exit and judge it; returns once this attempt's threads are done."""
        tree = self.seams.tree
        try:
            self._watch()
            returncode = self.proc.wait()
            self.signaller.cancel()
            if self.hangs is not None:
                self.hangs.stop()
            drain(self.readers, tree.kill, self.journal.say)
            tree.stop()
            return self._end(returncode)
        finally:
            self.seams.signals.detach()
            if self.page is not None:
                self.page.close()

    def _watch(self) -> None:
        seams, plan, pid = self.seams, self.plan, self.proc.pid
        seams.tree.adopt(pid)
        seams.monitor.ranks = {}
        seams.monitor.pid = pid
        seams.monitor.start()
        resume = plan.resume
        self.journal.emit("attempt", {"event": "start", "attempt": plan.number, "pid": pid, "argv": list(plan.argv),
                                      "max_attempts": plan.max_attempts,
                                      **({"resume_checkpoint": resume.path, "resume_step": resume.step}
                                         if resume else {})})
        seams.signals.attach(self.signaller)
        if self.hangs is not None:
            self.hangs.start()
        for reader in self.readers:
            reader.start()

    # -- the child's events and output (reader threads) -------------------------------------------------
    def _on_events(self, events: list[dict]) -> None:
        rnd, node, start = self.round, self.journal.node, 0
        for i, event in enumerate(events):
            kind = event["kind"]
            if kind == "meta" and "rank" in event and rnd.workers.joined(event):
                self._deliver(events[start:i])  # the old round's events keep their attempt
                start = i
                rnd = self._next_round(event)
            event["attempt"] = rnd.number
            if node is not None:
                event["node"] = node
            if kind == "crash":
                rnd.crash = event
                rnd.workers.crashed(event)
            elif kind == "checkpoint":
                self.seams.checkpoints.seen(event)
            elif kind == "meta":
                if "rank" in event:
                    self.seams.monitor.ranks = rnd.workers.pids()
                if (wrong := protocol.mismatch(event)) is not None:
                    self.journal.say_once(wrong)
        self._deliver(events[start:] if start else events)

    def _deliver(self, events: list[dict]) -> None:
        if not events:
            return
        self.journal.deliver(events)
        if self.hangs is not None:
            self.hangs.observe(events)
        self.seams.recovery.check(events)

    def _on_output(self, stream: str, lines: list[str]) -> None:
        self.journal.output(stream, lines)
        if stream == "stderr" and self.round.workers.by_rank:
            self.round.workers.report.feed(lines)  # torchrun's account of its workers' exits
        scraper = self.seams.scraper
        if scraper is not None and (scraped := scraper.scan(lines)):
            self._on_events(scraped)
        if self.hangs is not None:
            self.hangs.feed(stream, lines)

    def _next_round(self, event: dict) -> Round:
        """torchrun restarted its workers (its own ``--max-restarts``): the round that failed is an attempt
        with its error record, and the new round the next attempt, which the recovery watch follows."""
        old, journal = self.round, self.journal
        count = int(event["data"].get("restart_count") or 0)
        error = self._error_record(old, 1, None, None)
        journal.emit("attempt", {"event": "exit", "attempt": old.number, "status": "failed", "by": "torchrun",
                                 "cause": error["cause"], "next": "restart"})
        reason = f"torchrun restarted its workers (its restart {count}) after: {error['cause']}"
        journal.emit("restart", {"attempt": old.number + 1, "reason": reason, "by": "torchrun", "delay_s": 0})
        journal.say(reason)
        self.round = new = Round(old.number + 1, old.workers.next_round(count))
        new.workers.joined(event)
        journal.attempt = new.number
        journal.emit("attempt", {"event": "start", "attempt": new.number, "by": "torchrun", "restart_count": count,
                                 "pid": self.proc.pid})
        self.seams.recovery.watch(error)
        return new

    # -- the end ----------------------------------------------------------------------------------------
    def _end(self, returncode: int) -> AttemptResult:
        """The status from how the child ended (never from the child), its error record, its exit data."""
        rnd, monitor = self.round, self.seams.monitor
        exit_code, sig = launch.exit_status(returncode)
        forwarded = self.signaller.forwarded
        hung = self.hangs is not None and self.hangs.fired
        oom_delta = options.oom_delta(self.oom_before, self.seams.oom_kills())
        status = options.decide_status(exit_code, sig, forwarded, oom_delta, hung=hung)
        self.seams.recovery.resolve(status == "finished")
        error = None
        if status != "finished" and (forwarded is None or hung):
            error = self._error_record(rnd, exit_code, sig, oom_delta)
            status = options.diagnosed_status(status, sig, error["category"])
        exit_data = {"event": "exit", "attempt": rnd.number, "exit_code": exit_code, "signal": sig,
                     "signal_name": launch.signal_name(sig) or None, "status": status, "oom_kill_delta": oom_delta,
                     "last_step": self._position(0 if rnd.workers.distributed else None)["step"],
                     "peaks": monitor.peaks(),
                     "malformed_events": sum(reader.splitter.malformed for reader in self.readers) or None,
                     "cause": error["cause"] if error is not None else None,
                     "forwarded_signal": launch.signal_name(forwarded) or None}
        return AttemptResult(rnd.number, exit_code, sig, status, error,
                             restart.Failure.of(status, error, forwarded, hung), exit_data)

    def _error_record(self, rnd: Round, exit_code: int, sig: int | None, oom_delta: int | None) -> dict:
        """Classify the failure from everything known now (in a distributed run, its root-cause rank's), and
        record it."""
        stderr = next(r for r in self.readers if r.stream == "stderr")
        hangs, monitor, node = self.hangs, self.seams.monitor, self.journal.node
        blame = ranks.blame(rnd.workers, rnd.crash, list(stderr.tail), exit_code, sig,
                            hangs.stack if hangs is not None else None, hangs.stacks if hangs is not None else {})
        position = self._position(blame.fields.get("rank"))
        record = failure.failure_record(
            blame.crash, exit_code=None if blame.signal else blame.exit_code, signal=blame.signal,
            stderr_tail=blame.stderr, phase=position["phase"], position=position,
            samples=monitor.recent(MEMORY_TIMELINE_S), oom_kill_delta=oom_delta, hang_stack=blame.hang_stack)
        suffix = "" if node is None else f"-node{node}"
        error = failure.error_record(record, attempt=rnd.number, error_id=f"attempt-{rnd.number}{suffix}")
        error.update(blame.fields, **({"node": node} if suffix else {}))
        error["peaks"] = monitor.peaks()
        error["memory_timeline"] = [{k: r.get(k) for k in ("t", "rss_mb", "headroom_mb", "mem_limit_mb")}
                                    for r in record.samples]
        self.journal.emit("error", error, step=record.step, epoch=record.epoch, batch=record.batch)
        return error

    def _position(self, rank: int | None) -> dict:
        """Where the run (or ``rank``) is: the last event's position, brought up to the live page, which knows
        the steps run since the last report (a native crash, a kill or a hang between reports)."""
        position = self.journal.writer.position()
        if self.page is None:
            return position
        return merge(position, self.page.of_rank(rank))
