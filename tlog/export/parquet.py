"""Parquet export: one file per table (metrics, system, errors, events) in ``OUT/<experiment>/``.

Typed columns: ``step`` int64, ``time`` a UTC timestamp, metrics float64 (null where a step lacks one);
errors and events keep their nested details as JSON text.  Each file is written to a temporary name and
renamed, so exporting again replaces it and never duplicates a row.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tlog import protocol
from tlog.export import tables
from tlog.store import columns

ERROR_FIELDS = {"attempt": pa.int64(), "step": pa.int64(), "epoch": pa.float64(), "batch": pa.int64(),
                "category": pa.string(), "phase": pa.string(), "transient": pa.bool_(), "exit_code": pa.int64(),
                "signal": pa.string(), "cause": pa.string(), "error_message": pa.string(), "rule": pa.string(),
                "remedy": pa.string(), "traceback": pa.string()}


def export(exp_dir: Path, out: str, progress: bool = True) -> str:
    dest = Path(out) / exp_dir.name
    dest.mkdir(parents=True, exist_ok=True)
    cols = columns.read(exp_dir)
    _write(dest / "metrics.parquet", _numeric(tables.metrics(cols)))
    _write(dest / "system.parquet", _numeric(tables.system(cols)))
    _write(dest / "errors.parquet", _errors(tables.errors(exp_dir)))
    _write(dest / "events.parquet", _events(tables.events(exp_dir)))
    return str(dest)


def _numeric(table: dict[str, np.ndarray]) -> pa.Table:
    arrays: dict[str, pa.Array] = {"attempt": pa.array(table["attempt"], pa.int64()),
                                   "step": pa.array(table["step"], pa.int64()),
                                   "epoch": pa.array(table["epoch"], pa.float64(), from_pandas=True),
                                   "time": _timestamps(table["time"])}
    for name, values in table.items():
        if name not in arrays:
            arrays[name] = pa.array(values, pa.float64(), from_pandas=True)  # NaN -> null: no point there
    return pa.table(arrays)


def _timestamps(seconds: Any) -> pa.Array:
    micros = np.round(np.asarray(seconds, dtype=np.float64) * 1e6)
    mask = np.isnan(micros)
    return pa.array(np.where(mask, 0, micros).astype(np.int64), pa.timestamp("us", tz="UTC"), mask=mask)


def _errors(rows: list[dict[str, Any]]) -> pa.Table:
    data: dict[str, pa.Array] = {"time": pa.array([row.get("timestamp") for row in rows], pa.string())}
    for name, kind in ERROR_FIELDS.items():
        data[name] = pa.array([_typed(row.get(name), kind) for row in rows], kind)
    data["details"] = pa.array([protocol.dumps(row).decode() for row in rows], pa.string())
    return pa.table(data)


def _typed(value: Any, kind: pa.DataType) -> Any:
    if value is None:
        return None
    if kind == pa.string():
        return str(value)
    if kind == pa.bool_():
        return bool(value)
    number = protocol.number(value)
    if number is None:
        return None
    return int(number) if kind == pa.int64() else float(number)


def _events(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.table({
        "time": _timestamps([e.get("t") if isinstance(e.get("t"), (int, float)) else np.nan for e in rows]),
        "kind": pa.array([str(e["kind"]) for e in rows], pa.string()),
        "attempt": pa.array([_typed(e.get("attempt"), pa.int64()) for e in rows], pa.int64()),
        "rank": pa.array([_typed(e.get("rank"), pa.int64()) for e in rows], pa.int64()),
        "step": pa.array([_typed(e.get("step"), pa.int64()) for e in rows], pa.int64()),
        "data": pa.array([protocol.dumps(e["data"]).decode() for e in rows], pa.string()),
    })


def _write(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
