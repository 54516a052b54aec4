"""What the reports read: summaries and errors of experiment directories.

Reports read files only, never a live process.  A finished run's final
training_summary.json is authoritative; a running or crashed run is folded
from events.jsonl with the same SummaryBuilder the writer uses.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from tlog.store import layout
from tlog.store.reader import ReadStats, iter_events, read_json
from tlog.store.summary import SummaryBuilder

FINAL = frozenset({"finished", "failed", "killed", "oom-killed", "hung", "interrupted"})


def load_summary(exp_dir: Path) -> dict[str, Any]:
    """The summary of one experiment, whatever state it is in."""
    saved = read_json(exp_dir / layout.SUMMARY)
    if isinstance(saved, dict) and saved.get("status") in FINAL:
        saved.setdefault("path", str(exp_dir))
        return saved
    builder = SummaryBuilder(exp_dir.name)
    stats = ReadStats()
    for event in iter_events(exp_dir, stats):
        builder.add(event)
    result = builder.result()
    if result["status"] in ("running", "unknown") and _supervisor_gone(result.get("meta", {})):
        result["status"] = "interrupted"
    result["path"] = str(exp_dir)
    result["malformed_lines"] = stats.malformed
    result["partial_tail"] = stats.partial_tail
    return result


def _supervisor_gone(meta: dict) -> bool:
    """A 'running' run whose supervisor no longer exists on this host was cut short."""
    pid = meta.get("supervisor_pid") or (meta.get("pid") if meta.get("supervised") is False else None)
    if not isinstance(pid, int) or meta.get("host", platform.node()) != platform.node():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def load_errors(exp_dir: Path) -> list[dict[str, Any]]:
    """Error records of training_errors.json, or folded from events.jsonl if it is missing."""
    saved = read_json(exp_dir / layout.ERRORS)
    if not isinstance(saved, list):
        saved = [e["data"] for e in iter_events(exp_dir) if e["kind"] == "error"]
    return [{"experiment": exp_dir.name, **err} for err in saved if isinstance(err, dict)]


def list_summaries(log_dir: Path) -> list[dict[str, Any]]:
    """One line of facts per experiment, newest first."""
    rows = []
    for exp_dir in layout.list_experiments(log_dir):
        s = load_summary(exp_dir)
        loss = s.get("metrics", {}).get("loss", {})
        rows.append({"experiment": exp_dir.name, "status": s.get("status"), "started": s.get("started"),
                     "duration_s": s.get("duration_s"), "steps": s.get("steps"),
                     "best_loss": loss.get("best"), "errors": s.get("errors", {}).get("count", 0),
                     "restarts": s.get("restarts", 0)})
    return rows
