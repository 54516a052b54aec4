"""What the writer leaves behind so reports on long runs never refold them from the first event.

Every few seconds (with the live training_summary.json) and at close, the writer saves the state of its
summary fold together with the byte offset of events.jsonl it covers, and extends the metric columns
(``tlog.store.columns``) within a small time budget.  A report on a running run, or on one whose
supervisor died, restores that state and folds only the events written after it: the same fold, so the
same numbers, in milliseconds instead of seconds.  A snapshot that does not match events.jsonl (other
inode, shorter file, different bytes before the offset, another version of the fold) is ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

from tlog import protocol
from tlog.store import columns, layout
from tlog.store.safefile import write_json
from tlog.store.summary import SummaryBuilder

STATE = ".tlog/summary_state.json"
COLUMNS_BUDGET_S = 0.05


def refresh(exp_dir: Path, events_bytes: int, builder: SummaryBuilder) -> None:
    """The writer's hook: save the fold's state, then extend the columns for at most COLUMNS_BUDGET_S.

    The budget keeps the supervisor's cost at 1% of a core: a run logging up to ~2,500 events/s is
    indexed as it goes; past that the columns fall behind and the first plot catches up (never the exit of
    ``tlog run``).  Never raises: these files only make reports faster, and the run must not suffer.
    """
    try:
        save_state(exp_dir, events_bytes, builder)
        columns.update(exp_dir, budget_s=COLUMNS_BUDGET_S)
    except Exception:  # noqa: BLE001 - a report that needs them rebuilds them and shows what went wrong
        pass


def save_state(exp_dir: Path, events_bytes: int, builder: SummaryBuilder) -> None:

    path = exp_dir / STATE
    path.parent.mkdir(exist_ok=True)
    events = exp_dir / layout.EVENTS
    write_json(path, {"events_bytes": events_bytes, "events_ino": events.stat().st_ino,
                      "check": columns.check_bytes(events, events_bytes).hex(), "state": builder.state()})


def restore(exp_dir: Path) -> tuple[SummaryBuilder, int] | None:
    """(builder, offset) from the saved state when it still describes events.jsonl's first ``offset`` bytes."""
    events = exp_dir / layout.EVENTS
    try:
        saved = protocol.loads((exp_dir / STATE).read_bytes())
        offset = saved["events_bytes"]
        st = os.stat(events)
        if (saved["events_ino"] != st.st_ino or offset > st.st_size
                or columns.check_bytes(events, offset).hex() != saved["check"]):
            return None
        builder = SummaryBuilder.from_state(saved["state"])
    except (OSError, ValueError, KeyError, TypeError, protocol.JSONDecodeError):
        return None
    return None if builder is None else (builder, offset)
