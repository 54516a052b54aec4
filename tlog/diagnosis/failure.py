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

from tlog.diagnosis.classify import Diagnosis, FailureRecord, classify

STDERR_TAIL_LINES = 200
MB = 1024 * 1024


def failure_record(crash: dict | None, *, exit_code: int | None, signal: int | None,
                   stderr_tail: Sequence[str] = (), phase: str | None = None,
                   position: dict | None = None, samples: Sequence[dict] = (),
                   oom_kill_delta: int | None = None, hang_stack: str | None = None) -> FailureRecord:
    """Assemble the classifier's input; ``crash`` is the crash event or None.

    Resource readings taken after the child was gone (no process, or a zombie with no memory) are dropped:
    a timeline ending at 0 B would hide the climb that preceded an OOM kill.
    """
    data = (crash or {}).get("data", {})
    pos = {**(position or {}), **{k: crash[k] for k in ("step", "epoch", "batch") if crash and k in crash}}
    return FailureRecord(
        exc_type=data.get("type"), message=data.get("message"), traceback=data.get("traceback"),
        chain=tuple(data.get("chain") or ()), exit_code=exit_code, signal=signal,
        stderr_tail="\n".join(list(stderr_tail)[-STDERR_TAIL_LINES:]),
        phase=data.get("phase") if crash else phase, epoch=pos.get("epoch"), batch=pos.get("batch"),
        step=pos.get("step"), samples=tuple(_in_bytes(s) for s in samples if _alive(s)),
        oom_kill_delta=oom_kill_delta, hang_stack=hang_stack,
    )


def _alive(sample: dict) -> bool:
    return bool(sample.get("nprocs", 1)) and sample.get("rss_mb") != 0


def _in_bytes(sample: dict) -> dict:
    """The monitor reads megabytes; the classifier weighs RSS against the limit in bytes."""
    out = dict(sample)
    for mb, key in (("rss_mb", "rss_bytes"), ("mem_limit_mb", "mem_limit_bytes")):
        value = sample.get(mb)
        if isinstance(value, (int, float)) and key not in out:
            out[key] = int(value * MB)
    return out


def recovery_update(error: dict[str, Any], *, successful: bool, recovered_t: float | None = None,
                    failed_t: float | None = None) -> dict[str, Any]:
    """The data of an ``error`` event amending ``error`` once a restart showed whether it recovered.

    Successful means the restarted attempt got past the step where this failure happened;
    ``recovery_time`` is the seconds from the failure to that moment.
    """
    elapsed = None if not successful or recovered_t is None or failed_t is None else round(recovered_t - failed_t, 3)
    return {"update_of": error["id"], "recovery_attempted": True, "recovery_successful": successful,
            "recovery_time": elapsed}


def error_record(record: FailureRecord, *, attempt: int, t: float | None = None,
                 diagnosis: Diagnosis | None = None, error_id: str | None = None) -> dict[str, Any]:
    """The seed's error JSON plus traceback, attempt, exit status and the diagnosis.

    ``error_id`` names the record for a later update (its recovery, see ``recovery_update``).
    """
    diagnosis = diagnosis or classify(record)
    t = time.time() if t is None else t
    return {
        "id": error_id or f"attempt-{attempt}",
        "category": diagnosis.category,
        "phase": diagnosis.phase or "unknown",
        "error_message": _message(record, diagnosis),
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
        "remedy": diagnosis.remedy or None,
        "evidence": list(diagnosis.evidence),
        "rule": diagnosis.rule,
        "traceback": record.traceback or record.hang_stack or record.stderr_tail or None,
    }


def _message(record: FailureRecord, diagnosis: Diagnosis) -> str:
    """The exception as Python prints it; without one (a native crash, a kill, a hang) the diagnosis says it best."""
    if record.exc_type:
        return f"{record.exc_type}: {record.message}" if record.message else record.exc_type
    if record.signal or record.hang_stack:
        return diagnosis.cause
    return _last_line(record.stderr_tail) or diagnosis.cause


def _last_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return ""
