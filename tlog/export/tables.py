"""An experiment as columns: metrics wide (one row per step), resource samples, errors and events.

Read from the columnar cache (``store.columns``), never by parsing the CSV, so a 1,000,000-step run
becomes arrays in well under a second.  Shared by every exporter and by ``tlog.load``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tlog.store import columns, layout
from tlog.store.reader import iter_all_events, read_json

SKIP_EVENTS = frozenset({"metrics", "system"})
_SKIP_LINES = (b'"kind":"metrics"', b'"kind":"system"')


def wide(cols: columns.Columns, names: list[str], key: int) -> dict[str, np.ndarray]:
    """Series ``names`` of ``cols`` side by side, one row per attempt and distinct ``key`` (STEP or T); NaN
    where a series has no point.  ``attempt``, ``step``, ``epoch`` and ``time`` (unix seconds) come from the
    series that has the row: a run restarted from a checkpoint repeats steps, each attempt keeps its own."""
    starts = attempt_starts(cols)
    arrays = {name: a for name in names if len(a := cols.get(name))}
    keyed = {name: _row_keys(a, key, starts) for name, a in arrays.items()}
    keys = np.empty(0)
    for k in keyed.values():  # most series share one run of keys: merge each distinct one once
        if not (len(k) == len(keys) and np.array_equal(k, keys)):
            keys = np.union1d(keys, k)
    n = len(keys)
    out = {"attempt": np.ones(n, np.int64), "step": np.zeros(n), "epoch": np.full(n, np.nan),
           "time": np.full(n, np.nan)}
    values = {}
    for name, a in arrays.items():
        k = keyed[name]
        idx = np.arange(n) if len(k) == n and np.array_equal(k, keys) else np.searchsorted(keys, k)
        out["step"][idx] = a[:, columns.Columns.STEP]
        out["epoch"][idx] = a[:, columns.Columns.EPOCH]
        out["time"][idx] = a[:, columns.Columns.T]
        column = np.full(n, np.nan)
        column[idx] = a[:, columns.Columns.VALUE]
        values[name.removeprefix(columns.SYSTEM)] = column
    out["step"] = out["step"].astype(np.int64)
    out["attempt"] = attempt_of(out["time"], starts)
    return {**out, **values}


def _row_keys(a: np.ndarray, key: int, starts: list[float]) -> np.ndarray:
    """``key`` of each point, offset by its attempt so attempts sort apart (exact in float64 below 2**53)."""
    if not starts:
        return a[:, key]
    return attempt_of(a[:, columns.Columns.T], starts) * 1e12 + a[:, key]


def metrics(cols: columns.Columns) -> dict[str, np.ndarray]:
    """One row per step, one column per metric (validation ones included)."""
    return wide(cols, cols.metrics, columns.Columns.STEP)


def system(cols: columns.Columns) -> dict[str, np.ndarray]:
    """One row per resource sample: memory of the run's processes and of each GPU, in MB."""
    return wide(cols, cols.system, columns.Columns.T)


def errors(exp_dir: Path) -> list[dict[str, Any]]:
    """The classified failures, as ``tlog errors`` shows them."""
    from tlog.report import load_errors

    return load_errors(exp_dir)


def events(exp_dir: Path) -> list[dict[str, Any]]:
    """Every event but metrics and resource samples (attempts, checkpoints, errors, warnings, config...)."""
    return [e for e in iter_all_events(exp_dir, skip=_SKIP_LINES) if e["kind"] not in SKIP_EVENTS]


def config(exp_dir: Path) -> dict[str, Any]:
    """The captured configuration (script arguments, optimizer, tlog's own options)."""
    saved = read_json(exp_dir / layout.CONFIG)
    return saved if isinstance(saved, dict) else {}


def summary(exp_dir: Path) -> dict[str, Any]:
    from tlog.report import load_summary

    return load_summary(exp_dir)


def attempt_starts(cols: columns.Columns) -> list[float]:
    """Start times of the restarts (attempt 2, 3, ...), to split a run's rows by attempt."""
    return sorted(m["t"] for m in cols.markers.get("attempts", []) if isinstance(m.get("t"), (int, float)))


def attempt_of(times: np.ndarray, starts: list[float]) -> np.ndarray:
    """Attempt number (1-based) of each row, from its time."""
    return (np.searchsorted(np.asarray(starts, dtype=np.float64), times, side="right") + 1).astype(np.int64)
