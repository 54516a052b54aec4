"""How a run stands: one vocabulary for the code that decides a status (supervisor/options.py, session.py,
scheduler.py), the store that keeps it and every view that reads it (summary, ls, watch, panel, exports)."""

from __future__ import annotations

LIVE = ("running", "restarting")  # the supervisor is at work and will write another status
UNKNOWN = "unknown"  # no status written yet: live, or a supervisor that died (the reports tell which)
FINISHED = "finished"
BAD = ("failed", "killed", "oom-killed", "hung", "preempted", "time-limit", "interrupted")  # ended, not well
ENDED = (FINISHED, *BAD)
RESTARTED = "restarted"  # not a status of its own: `tlog ls --status restarted` selects runs that restarted
SELECTABLE = (*LIVE, FINISHED, RESTARTED, *BAD, UNKNOWN)  # what `--status` accepts, in this order
