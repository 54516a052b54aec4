"""When to restart a failed attempt, and from which checkpoint.

Restarts are an explicit state machine: ``State`` names where the run is, ``RestartPolicy`` (frozen, built
once from the command line) says what the user allows, and ``transition`` is a pure function from
(machine, event) to the next machine.  Every rule (restart only what a restart can fix, at most N times,
never the same failure at the same step twice in a row, exponential backoff with a cap) is therefore
tested without a process; the session only reports what happened (``Started``, ``Exited``, ``Waited``,
``Cancelled``) and acts on the state it gets back.

    starting --Started--> running --Exited(None)--> finished
                                  --Exited(f)-----> backing_off --Waited--> starting
                                                \\-> failed | gave_up | crash_loop      (final, with a reason)
    backing_off --Cancelled--> failed

Which checkpoint: the newest one a ``checkpoint`` event announced (the probe emits it after ``torch.save``
returned, so the file is complete), or, with ``--checkpoint-glob``, the newest matching file.
"""

from __future__ import annotations

import glob
import os
import shlex
from dataclasses import dataclass, replace
from enum import StrEnum

from tlog import protocol
from tlog.diagnosis import rules as R
from tlog.diagnosis.rules import TRANSIENT
from tlog.settings import RUN_DEFAULTS as RUN

ALL = "all"
KNOWN_CATEGORIES = frozenset(R.CATEGORIES)


class State(StrEnum):
    """Values are what events and the summary carry; the last four are final."""

    STARTING = "starting"
    RUNNING = "running"
    BACKING_OFF = "backing_off"
    FINISHED = "finished"
    FAILED = "failed"
    GAVE_UP = "gave_up"
    CRASH_LOOP = "crash_loop"

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({State.FINISHED, State.FAILED, State.GAVE_UP, State.CRASH_LOOP})


@dataclass(frozen=True)
class RestartPolicy:
    """What ``--restart``, ``--max-restarts``, ``--restart-on`` and ``--backoff``/``--backoff-max`` allow."""

    on_failure: bool = RUN["restart"] == "on-failure"
    max_restarts: int = RUN["max_restarts"]
    restart_on: tuple[str, ...] | None = None  # None: each failure's own verdict (the rule that diagnosed it)
    backoff_s: float = RUN["backoff"]
    backoff_max_s: float = RUN["backoff_max"]

    @classmethod
    def parse(cls, mode: str, max_restarts: int, restart_on: str | None, backoff_s: float,
              backoff_max_s: float) -> RestartPolicy:
        """From the command line; a bad value raises ValueError with a one-line message."""
        if mode not in ("never", "on-failure"):
            raise ValueError(f"--restart must be 'never' or 'on-failure', not {mode!r}")
        if max_restarts < 0 or backoff_s < 0 or backoff_max_s < 0:
            raise ValueError("--max-restarts, --backoff and --backoff-max cannot be negative")
        if restart_on is None:
            return cls(mode == "on-failure", max_restarts, None, backoff_s, backoff_max_s)
        categories = {c.strip() for c in restart_on.split(",") if c.strip()}
        unknown = sorted(categories - KNOWN_CATEGORIES - {ALL})
        if unknown or not categories:
            raise ValueError(f"--restart-on: unknown categor{'ies' if len(unknown) > 1 else 'y'} "
                             f"{', '.join(unknown) or '(none given)'}; use 'all' or a comma list of "
                             f"{', '.join(sorted(KNOWN_CATEGORIES))}")
        return cls(mode == "on-failure", max_restarts, tuple(sorted(categories)), backoff_s, backoff_max_s)

    @property
    def max_attempts(self) -> int:
        return 1 + self.max_restarts if self.on_failure else 1

    def covers(self, failure: Failure) -> bool:
        """The user's ``--restart-on`` decides by category; without one, the diagnosis says whether a restart
        helps with this cause (a CUDA OOM at a fixed batch size does not, a kernel OOM kill may)."""
        if self.restart_on is None:
            return failure.restartable
        return ALL in self.restart_on or failure.category in self.restart_on

    def delay(self, restart: int) -> float:
        """Seconds before restart number ``restart`` (1-based): backoff doubling, capped."""
        return min(self.backoff_s * 2 ** max(restart - 1, 0), self.backoff_max_s)


@dataclass(frozen=True)
class Failure:
    """What the machine needs to know about a failed attempt (from the classified error record)."""

    status: str
    category: str
    signature: str
    step: int | None
    cause: str = ""
    interrupted: bool = False
    transient: bool | None = None  # the diagnosis's verdict; None: the category's
    rule: str = ""

    @property
    def restartable(self) -> bool:
        return self.category in TRANSIENT if self.transient is None else self.transient

    @classmethod
    def of(cls, status: str, error: dict | None, forwarded: int | None, hung: bool) -> Failure | None:
        """From the attempt's status and error record; None for a finished attempt."""
        if status == "finished":
            return None
        if error is None:  # stopped by a signal the user sent to tlog: nothing was classified
            return cls(status, R.SYSTEM, "interrupted", None, interrupted=True)
        category = error["category"]
        transient = error.get("transient")
        return cls(status, category, signature(category, error), error.get("step"), error.get("cause") or "",
                   interrupted=forwarded is not None and not hung,
                   transient=transient if isinstance(transient, bool) else None, rule=str(error.get("rule") or ""))


@dataclass(frozen=True)
class Machine:
    """Where the run is: the state, the attempt running (1-based), restarts used, the last failure (for the
    crash-loop rule), and the reason and delay of the last decision (what the session says and waits)."""

    state: State = State.STARTING
    attempt: int = 0
    restarts: int = 0
    last: Failure | None = None
    reason: str = ""
    delay_s: float = 0.0


# What the session reports: an attempt was spawned, it ended, its backoff elapsed, or a signal cancelled it.
@dataclass(frozen=True)
class Started:
    pass


@dataclass(frozen=True)
class Exited:
    failure: Failure | None


@dataclass(frozen=True)
class Waited:
    pass


@dataclass(frozen=True)
class Cancelled:
    reason: str


Event = Started | Exited | Waited | Cancelled


def transition(m: Machine, event: Event, policy: RestartPolicy) -> Machine:
    """The next machine; an event that makes no sense in the current state is a bug and raises."""
    if isinstance(event, Started) and m.state is State.STARTING:
        return replace(m, state=State.RUNNING, attempt=m.attempt + 1, reason="", delay_s=0.0)
    if isinstance(event, Exited) and m.state is State.RUNNING:
        return _after_exit(m, event.failure, policy)
    if isinstance(event, Waited) and m.state is State.BACKING_OFF:
        return replace(m, state=State.STARTING)
    if isinstance(event, Cancelled) and m.state is State.BACKING_OFF:
        return replace(m, state=State.FAILED, reason=event.reason, delay_s=0.0)
    raise ValueError(f"{type(event).__name__} is not expected in state {m.state.value}")


def _after_exit(m: Machine, failure: Failure | None, policy: RestartPolicy) -> Machine:
    if failure is None:
        return replace(m, state=State.FINISHED)
    stop = replace(m, last=failure, state=State.FAILED)
    if failure.interrupted:
        return replace(stop, reason="stopped on request: not restarting")
    if not policy.on_failure:
        return stop
    if not policy.covers(failure):
        return replace(stop, reason=_not_covered(failure, policy))
    if m.last is not None and (m.last.signature, m.last.step) == (failure.signature, failure.step):
        at = f"step {failure.step}" if failure.step is not None else "the same point (before any step)"
        return replace(stop, state=State.CRASH_LOOP,
                       reason=f"crash loop: the same {failure.category} failure ({failure.signature}) at {at} "
                              f"twice in a row; not restarting")
    if m.restarts >= policy.max_restarts:
        return replace(stop, state=State.GAVE_UP,
                       reason=f"giving up after {m.restarts} restart{'s' * (m.restarts != 1)} "
                              f"(--max-restarts {policy.max_restarts})")
    restarts = m.restarts + 1
    return replace(stop, state=State.BACKING_OFF, restarts=restarts, delay_s=policy.delay(restarts),
                   reason=failure.cause or f"{failure.category} failure")


def _not_covered(failure: Failure, policy: RestartPolicy) -> str:
    category = failure.category
    if policy.restart_on is not None and category in TRANSIENT:
        return f"not restarting: {category} is not in --restart-on {','.join(policy.restart_on)}"
    if category in TRANSIENT:  # the rule's own verdict: this cause recurs, though its category usually does not
        rule = f" ({failure.rule})" if failure.rule else ""
        return (f"not restarting: this {category} failure{rule} would recur until its cause is fixed; "
                f"--restart-on {category} retries it")
    return (f"not restarting: {category} failures are not transient (a restart would likely fail the same way); "
            f"--restart-on all or --restart-on {category} retries them")


def signature(category: str, error: dict) -> str:
    """'The same failure': category and exception type (or, without one, the classifier's rule)."""
    message = str(error.get("error_message") or "")
    head = message.split(":", 1)[0] if ":" in message else ""
    kind = head if head and " " not in head else error.get("rule") or "no exception"
    return f"{category}/{kind}"


class RecoveryWatch:
    """Did the restart recover?  Yes once the restarted attempt gets past the step where the failure happened."""

    def __init__(self, error: dict, failed_t: float) -> None:
        self.error = error
        self.failed_t = failed_t
        self.step: int | None = error.get("step")

    def passed(self, events: list[dict]) -> float | None:
        """The time of the first step beyond the failing one among ``events`` (any step, if it failed before one)."""
        step = self.step
        for event in events:
            if event["kind"] == "metrics":
                reached = event.get("step")
                if reached is not None and (step is None or reached > step):
                    return event.get("t")
        return None


# -- which checkpoint -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResumePoint:
    path: str
    step: int | None
    epoch: int | None = None  # the epoch a run resumed from it is in: the checkpoint's, or the next if complete


class Checkpoints:
    """Remembers the checkpoints the run announced, to pick the one a restart resumes from."""

    def __init__(self, pattern: str | None = None) -> None:
        self.pattern = pattern
        self.newest: ResumePoint | None = None
        self.points: dict[str, ResumePoint] = {}  # announced checkpoints by absolute path
        self.rank: int | None = None

    def seen(self, event: dict) -> None:
        """A ``checkpoint`` event: the file is complete (emitted after the save returned).

        In a distributed run the job resumes from rank 0's checkpoints (the lowest rank this supervisor
        hears from, on a node without rank 0): other ranks' saves are shards or copies of the same state.
        """
        path = event["data"].get("path")
        rank = event.get("rank")
        if rank is not None:
            if self.rank is not None and rank > self.rank:
                return
            self.rank = rank
        if isinstance(path, str):
            step, epoch = event.get("step"), event.get("epoch")
            if isinstance(epoch, int) and event["data"].get("epoch_complete") is True:
                epoch += 1
            self.points[os.path.abspath(path)] = point = ResumePoint(path, step, epoch)
            self.newest = point

    def resume_point(self) -> ResumePoint | None:
        """The newest matching file with ``--checkpoint-glob``, else the newest announced one that still exists."""
        if self.pattern:
            files = [f for f in glob.glob(self.pattern, recursive=True) if os.path.isfile(f)]
            if not files:
                return None
            path = os.path.abspath(max(files, key=os.path.getmtime))
            return self.points.get(path, ResumePoint(path, None))
        if self.newest is not None and os.path.exists(self.newest.path):  # a file, or a framework's directory
            return self.newest
        return None


def resume_env(point: ResumePoint | None) -> dict[str, str]:
    """What a restarted child learns: the checkpoint (``tlog.resume_checkpoint()``), its step and epoch (for the
    probe, which counts on from them)."""
    env = {} if point is None else {protocol.ENV_RESUME_CHECKPOINT: point.path}
    for key, value in ((protocol.ENV_RESUME_STEP, point and point.step),
                       (protocol.ENV_RESUME_EPOCH, point and point.epoch)):
        if value is not None:
            env[key] = str(value)
    return env


def resume_args(template: str | None, point: ResumePoint | None) -> list[str]:
    """``--resume-arg '--resume {checkpoint}'`` as arguments for a restarted attempt (none without a checkpoint)."""
    if not template or point is None:
        return []
    step = "" if point.step is None else str(point.step)
    return [arg.replace("{checkpoint}", point.path).replace("{step}", step) for arg in shlex.split(template)]


def check_template(template: str | None) -> None:
    """Refuse a ``--resume-arg`` that cannot be split or names no checkpoint (ValueError, one line)."""
    if template is None:
        return
    try:
        parts = shlex.split(template)
    except ValueError as exc:
        raise ValueError(f"--resume-arg: {exc}") from None
    if not any("{checkpoint}" in part for part in parts):
        raise ValueError("--resume-arg must contain {checkpoint}, e.g. --resume-arg '--resume {checkpoint}'")
