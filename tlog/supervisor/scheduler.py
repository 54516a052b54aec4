"""What a batch scheduler's signal means: under Slurm, a SIGTERM or SIGUSR1 is a preemption or the time limit.

Slurm signals the job step when it preempts the job (SIGTERM, after ``GraceTime``) and when the job reaches
its time limit (SIGTERM; SIGUSR1 or another signal earlier with ``--signal``).  ``SLURM_JOB_END_TIME`` (the
job's scheduled end, unix seconds; Slurm 21.08+) tells them apart: a signal within ``NEAR_END_S`` of it is
the time limit, any other is a preemption.  The run is then recorded as ``preempted`` or ``time-limit``
rather than ``killed``, and, like a signal from the user, never counts as a crash to restart from.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping

NEAR_END_S = 900.0  # --signal=USR1@N warnings are usually sent a few minutes before the limit
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def under_slurm(env: Mapping[str, str] = os.environ) -> bool:
    return bool(env.get("SLURM_JOB_ID"))


def extra_signals(env: Mapping[str, str] = os.environ) -> tuple[int, ...]:
    """Signals tlog must catch and forward besides INT/TERM/HUP: Slurm's SIGUSR1 warning."""
    return (signal.SIGUSR1,) if under_slurm(env) else ()


def outcome(signum: int, env: Mapping[str, str] = os.environ, now: float | None = None) -> str | None:
    """``time-limit``, ``preempted``, or None when ``signum`` did not come from a scheduler."""
    if not under_slurm(env) or signum not in SIGNALS:
        return None
    try:
        end = float(env.get("SLURM_JOB_END_TIME", ""))
    except ValueError:
        return "preempted"
    now = time.time() if now is None else now
    return "time-limit" if now >= end - NEAR_END_S else "preempted"
