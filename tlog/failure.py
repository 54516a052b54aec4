"""One failure record from everything tlog knows at the moment a run dies.

The crash event (if the hook saw an exception), the exit status, the stderr
tail, the last phase and the last resource samples become a FailureRecord;
``classify`` turns it into a diagnosis; this module turns both into the error
record of training_errors.json (the seed's fields first, then tlog's).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tlog.classify import Diagnosis, FailureRecord, classify

STDERR_TAIL_LINES = 200


def failure_record(crash: dict | None, *, exit_code: int | None, signal: int | None,
                   stderr_tail: Sequence[str] = (), phase: str | None = None,
                   position: dict | None = None, samples: Sequence[dict] = (),
                   oom_kill_delta: int | None = None, hang_stack: str | None = None) -> FailureRecord:
    """Assemble the classifier's input; ``crash`` is the crash event or None."""
    data = (crash or {}).get("data", {})
    pos = {**(position or {}), **{k: crash[k] for k in ("step", "epoch", "batch") if crash and k in crash}}
    return FailureRecord(
        exc_type=data.get("type"), message=data.get("message"), traceback=data.get("traceback"),
        chain=tuple(data.get("chain") or ()), exit_code=exit_code, signal=signal,
        stderr_tail="\n".join(list(stderr_tail)[-STDERR_TAIL_LINES:]),
        phase=data.get("phase") or phase, epoch=pos.get("epoch"), batch=pos.get("batch"),
        step=pos.get("step"), samples=tuple(samples), oom_kill_delta=oom_kill_delta, hang_stack=hang_stack,
    )


def error_record(record: FailureRecord, *, attempt: int, t: float | None = None,
                 diagnosis: Diagnosis | None = None) -> dict[str, Any]:
    """The seed's error JSON plus traceback, attempt, exit status and the diagnosis."""
    diagnosis = diagnosis or classify(record)
    t = time.time() if t is None else t
    message = record.message or _last_line(record.stderr_tail) or diagnosis.cause
    if record.exc_type and record.message is not None:
        message = f"{record.exc_type}: {record.message}"
    return {
        "category": diagnosis.category,
        "phase": diagnosis.phase or "unknown",
        "error_message": message,
        "timestamp": datetime.fromtimestamp(t).isoformat(timespec="seconds"),
        "epoch": record.epoch,
        "batch": record.batch,
        "recovery_attempted": False,
        "recovery_successful": False,
        "recovery_time": None,
        "step": record.step,
        "attempt": attempt,
        "exit_code": record.exit_code,
        "signal": record.signal,
        "transient": diagnosis.transient,
        "cause": diagnosis.cause,
        "evidence": list(diagnosis.evidence),
        "rule": diagnosis.rule,
        "traceback": record.traceback or record.hang_stack or record.stderr_tail or None,
    }


def _last_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return ""
