"""What the reports read: summaries, errors and comparisons of experiment directories.

Reports read files only, never a live process.  The summary of a run is the writer's own fold
(SummaryBuilder): restored from the state the writer saved with its last snapshot, then fed only the events
written after it, so a running or crashed run of a million steps is summarised in milliseconds and with the
same numbers the writer would give.  A run without a snapshot is folded from its first event.  A multi-node
run (each node's supervisor writes its own ``*.node<k>.*`` files) is folded from every node's events merged by
time, and its errors are every node's.
"""

from __future__ import annotations

import fnmatch
import os
import platform
from pathlib import Path
from typing import Any

from tlog import statuses
from tlog.store import layout, snapshot
from tlog.store.reader import ReadStats, iter_all_events, iter_events, read_json
from tlog.store.safefile import write_json
from tlog.store.summary import SummaryBuilder, merge_error_update

LIVE = frozenset({*statuses.LIVE, statuses.UNKNOWN})  # a status that may still change
# Differ between any two runs without saying how they differ (the command line is compared as ``command``).
UNCOMPARED = frozenset({"tlog.name", "tlog.target", "environment.argv", "environment.pid"})
STATUSES = statuses.SELECTABLE


MERGED = ".tlog/merged_summary.json"


class ReportError(ValueError):
    """A bad filter or argument: shown to the user as one line."""


def load_summary(exp_dir: Path) -> dict[str, Any]:
    """The summary of one experiment, whatever state it is in."""
    stats = ReadStats()
    multi = layout.is_multi_node(exp_dir)  # the writers' snapshots and summaries are one node's each
    if multi and (merged := _merged_cache(exp_dir)) is not None:
        return {**merged["summary"], "path": str(exp_dir)}
    restored = None if multi else snapshot.restore(exp_dir)
    if restored is None:
        saved = None if multi else read_json(exp_dir / layout.SUMMARY)
        if isinstance(saved, dict) and saved.get("status", "unknown") not in LIVE:
            return {**saved, "path": str(exp_dir)}  # final, from a writer that left no snapshot
        restored = SummaryBuilder(exp_dir.name), 0
    builder, offset = restored
    for event in iter_all_events(exp_dir, stats, start=offset):
        builder.add(event)
    result = builder.result()
    if result["status"] in LIVE and _supervisor_gone(result.get("meta", {})):
        result["status"] = result["outcome"] = "interrupted"
    result["path"] = str(exp_dir)
    result["malformed_lines"] = stats.malformed
    result["partial_tail"] = stats.partial_tail
    if result["status"] not in LIVE:
        if multi:
            _save_merged(exp_dir, result)
        elif stats.end > offset:  # an ended run folded from events.jsonl: fold it once, not at every report
            _save_state(exp_dir, stats.end, builder)
    return result


def _save_state(exp_dir: Path, end: int, builder: SummaryBuilder) -> None:
    try:
        snapshot.save_state(exp_dir, end, builder)
    except OSError:
        pass  # a read-only directory: the next report folds again


def _node_sizes(exp_dir: Path) -> dict[str, int]:
    sizes = {}
    for node in layout.node_ids(exp_dir):
        name = layout.node_file(layout.EVENTS, node)
        try:
            sizes[name] = (exp_dir / name).stat().st_size
        except OSError:
            pass
    return sizes


def _merged_cache(exp_dir: Path) -> dict | None:
    """A multi-node run's summary, saved once it ended, while no node's events file changed since: the merge
    of every node's events is folded from the first event (about 3 µs an event), so it is done once."""
    saved = read_json(exp_dir / MERGED)
    return saved if isinstance(saved, dict) and saved.get("files") == _node_sizes(exp_dir) else None


def _save_merged(exp_dir: Path, result: dict[str, Any]) -> None:
    try:
        (exp_dir / MERGED).parent.mkdir(exist_ok=True)
        write_json(exp_dir / MERGED, {"files": _node_sizes(exp_dir), "summary": result})
    except OSError:
        pass  # a read-only directory: the next report folds again


def _supervisor_gone(meta: dict) -> bool:
    """A 'running' run whose supervisor no longer exists on this host was cut short."""
    pid = meta.get("supervisor_pid") or (meta.get("pid") if meta.get("supervised") is False else None)
    if not isinstance(pid, int) or meta.get("host", platform.node()) != platform.node():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def load_errors(exp_dir: Path) -> list[dict[str, Any]]:
    """Error records of training_errors.json, or folded from events.jsonl when it is missing.

    The writer rewrites that file at every error, so it is missing only when the writer saw none: with a
    snapshot that counted no errors, only the events written after it are read.  A multi-node run's are every
    node's, by time.
    """
    nodes = layout.node_ids(exp_dir)
    if not any(nodes):
        return [{"experiment": exp_dir.name, **err} for err in _node_errors(exp_dir, None) if isinstance(err, dict)]
    rows = [{"experiment": exp_dir.name, **err} for node in nodes for err in _node_errors(exp_dir, node)
            if isinstance(err, dict)]
    rows.sort(key=lambda err: str(err.get("timestamp") or ""))
    _link_nodes(rows)
    return rows


def _node_errors(exp_dir: Path, node: int | None) -> list[Any]:
    saved = read_json(exp_dir / layout.node_file(layout.ERRORS, node))
    if not isinstance(saved, list):
        restored = snapshot.restore(exp_dir) if node is None else None
        start = restored[1] if restored is not None and restored[0].errors_total == 0 else 0
        saved = []
        for event in iter_events(exp_dir, start=start, name=layout.node_file(layout.EVENTS, node)):
            if event["kind"] == "error":
                data = event["data"]
                if "update_of" not in data:
                    saved.append(data)
                else:
                    merge_error_update(saved, data)
    return saved


def _link_nodes(rows: list[dict[str, Any]]) -> None:
    """A node whose ranks only lost their peers failed because of the node that failed on its own, in the
    same attempt: its record points at that root cause."""
    roots = {err.get("attempt"): err for err in rows if not err.get("peer_lost") and "root_cause_rank" in err}
    for err in rows:
        root = roots.get(err.get("attempt"))
        if err.get("peer_lost") and root is not None:
            err["root_cause_rank"], err["root_cause_node"] = root["root_cause_rank"], root.get("node")


def filter_errors(rows: list[dict[str, Any]], category: str | None = None,
                  phase: str | None = None) -> list[dict[str, Any]]:
    """Rows of one category and/or phase; an unknown one is a ReportError listing the valid ones."""
    from tlog.diagnosis import rules  # the diagnosis package, here only: every other report starts faster

    if category is not None and category not in rules.CATEGORIES:
        raise ReportError(f"unknown category {category!r}; valid: {', '.join(rules.CATEGORIES)}")
    if phase is not None:
        phase = rules.PHASE_ALIASES.get(phase, phase)
        phases = (*rules.PHASES, "unknown")  # a failure whose phase nobody could tell
        if phase not in phases:
            raise ReportError(f"unknown phase {phase!r}; valid: {', '.join(phases)}")
    return [r for r in rows if (category is None or r.get("category") == category)
            and (phase is None or r.get("phase") == phase)]


def list_summaries(log_dir: Path, status: str | None = None, pattern: str | None = None) -> list[dict[str, Any]]:
    """One line of facts per experiment, newest first; ``pattern`` is a glob (or a substring) of the name."""
    if status is not None and status not in STATUSES:
        raise ReportError(f"unknown status {status!r}; valid: {', '.join(STATUSES)}")
    if pattern is not None and not any(c in pattern for c in "*?["):
        pattern = f"*{pattern}*"
    rows = []
    for exp_dir in layout.list_experiments(log_dir):
        if pattern is not None and not fnmatch.fnmatchcase(exp_dir.name, pattern):
            continue
        row = _ls_row(exp_dir)
        if status is not None and status != row["status"] and not (status == "restarted" and row["restarts"]):
            continue
        rows.append(row)
    return rows


def _ls_row(exp_dir: Path) -> dict[str, Any]:
    """One experiment's line; a corrupt one (unreadable, or values of the wrong type) shows what is sound, so
    it never stops the listing of the others."""
    try:
        s = load_summary(exp_dir)
    except Exception:  # noqa: BLE001 - any damage to one experiment's files
        s = {}
    s = s if isinstance(s, dict) else {}

    def get(obj: Any, key: str, kind: type | tuple[type, ...]) -> Any:
        value = obj.get(key) if isinstance(obj, dict) else None
        return value if isinstance(value, kind) and not isinstance(value, bool) else None

    number = (int, float)
    status = get(s, "status", str)
    return {"experiment": exp_dir.name, "status": status if status in STATUSES else "unknown",
            "restarts": get(s, "restarts", int) or 0, "started": get(s, "started", number),
            "duration_s": get(s, "duration_s", number), "steps": get(s, "steps", int),
            "best_loss": get(get(get(s, "metrics", dict), "loss", dict), "best", number),
            "errors": get(get(s, "errors", dict), "count", int) or 0}


def compare(exp_dirs: list[Path]) -> dict[str, Any]:
    """Configuration differences and final/best metrics of several runs, side by side."""
    summaries = [load_summary(d) for d in exp_dirs]
    names = [d.name if [x.name for x in exp_dirs].count(d.name) == 1 else str(d) for d in exp_dirs]
    configs = [{k: v for k, v in flatten(s.get("config") or {}).items() if k not in UNCOMPARED} for s in summaries]
    keys = sorted(set().union(*configs))
    missing = object()
    differs = {}
    for key in keys:
        values = [c.get(key, missing) for c in configs]
        if any(v != values[0] for v in values[1:]):
            differs[key] = [None if v is missing else v for v in values]
    metric_names = list(dict.fromkeys(name for s in summaries for name in s.get("metrics", {})))
    metrics = {name: [_metric_facts(s.get("metrics", {}).get(name)) for s in summaries] for name in metric_names}
    facts = {key: [s.get(key) for s in summaries]
             for key in ("status", "restarts", "steps", "epochs", "duration_s", "steps_per_s")}
    facts["errors"] = [s.get("errors", {}).get("count", 0) for s in summaries]
    return {"experiments": names, "paths": [str(d) for d in exp_dirs], "facts": facts,
            "config": {"differs": differs, "same": len(keys) - len(differs)}, "metrics": metrics}


def _metric_facts(m: dict | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {k: m.get(k) for k in ("last", "best", "best_step", "mode", "min", "max")}


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested configuration as dotted keys, so two runs compare key by key."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
