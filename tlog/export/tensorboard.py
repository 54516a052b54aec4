"""TensorBoard export: event files ``tensorboard --logdir OUT`` shows, one run per attempt and rank.

Runs: ``OUT/<exp>`` (the first attempt), ``OUT/<exp>-attempt2``... and, for a distributed run, a
``rank<r>`` folder below each.  Every metric is a scalar at its global step and wall time, under
``train/<name>`` or ``validation/<name>``; resource samples under ``system/<key>``; the configuration as
text and hparams; each error as text at its step.

The events are TensorBoard's own protos in TFRecord framing; the records are framed here rather than by
``EventFileWriter`` because its checksum is pure Python (about 20 µs a record), which alone would take a
1,000,000-step run past half a minute: ``google-crc32c`` computes the same CRC-32C in C.  Each run's file has
a fixed name, written aside and renamed over the last export's, so exporting again never duplicates points.
"""

from __future__ import annotations

import os
import shutil
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams.summary_v2 import hparams_pb
from tensorboard.plugins.text.summary_v2 import text_pb

from tlog import protocol
from tlog.export import tables
from tlog.export.progress import progress_bar
from tlog.store import columns, layout

FILE = "events.out.tfevents.0.tlog"
VALIDATION = "validation_"

try:
    from google_crc32c import value as _crc32c
except ImportError:  # the slow pure-Python one tensorboard ships
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c as _crc32c  # type: ignore[no-redef]


def _masked(data: bytes) -> bytes:
    x = _crc32c(data) & 0xFFFFFFFF
    return struct.pack("<I", (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


class RecordFile:
    """A TFRecord file of events, written to ``<name>.tmp`` and renamed into place at ``close``; ``live``:
    written in place, so a running TensorBoard reads it as it grows."""

    def __init__(self, path: Path, wall_time: float, live: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.tmp = path if live else path.with_name(path.name + ".tmp")
        self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed by close()
        self.write(event_pb2.Event(wall_time=wall_time, file_version="brain.Event:2"))

    def write(self, event: event_pb2.Event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self.file.write(header + _masked(header) + data + _masked(data))

    def close(self) -> None:
        self.file.close()
        if self.tmp != self.path:
            os.replace(self.tmp, self.path)


def tag(name: str) -> str:
    """``validation/loss`` for ``validation_loss``, ``train/<name>`` for the rest."""
    if name.startswith(VALIDATION):
        return "validation/" + name[len(VALIDATION):]
    return "train/" + name


def scalar_events(table: dict[str, np.ndarray], prefix: str | None = None) -> Iterator[event_pb2.Event]:
    """One event per row with a value of every series present at that row (a wide table of ``tables``)."""
    names = [n for n in table if n not in ("attempt", "step", "epoch", "time")]
    tags = [(prefix + n) if prefix else tag(n) for n in names]
    values = [table[n].tolist() for n in names]
    Event, Summary, Value = event_pb2.Event, summary_pb2.Summary, summary_pb2.Summary.Value
    for i, (step, wall) in enumerate(zip(table["step"].tolist(), table["time"].tolist(), strict=True)):
        row = [Value(tag=t, simple_value=v[i]) for t, v in zip(tags, values, strict=True) if v[i] == v[i]]
        if row:
            yield Event(step=step, wall_time=wall, summary=Summary(value=row))


def _split(table: dict[str, np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
    """Rows of each attempt."""
    attempt = table["attempt"]
    if len(attempt) == 0 or attempt[0] == attempt[-1]:
        return {int(attempt[0]) if len(attempt) else 1: table}
    return {int(a): {k: v[attempt == a] for k, v in table.items()} for a in np.unique(attempt)}


def _header_events(exp_dir: Path, wall: float) -> list[event_pb2.Event]:
    from tlog.report import flatten

    config = tables.config(exp_dir)
    flat = {k: v for k, v in flatten(config).items() if isinstance(v, (bool, int, float, str))}
    text = "\n".join(f"    {k} = {v!r}" for k, v in sorted(flat.items()))
    events = [event_pb2.Event(wall_time=wall, step=0, summary=text_pb("config", text or "(none captured)"))]
    if flat:
        events.append(event_pb2.Event(wall_time=wall, step=0, summary=hparams_pb(flat, trial_id=exp_dir.name)))
    return events


def _error_events(exp_dir: Path) -> dict[int, list[event_pb2.Event]]:
    """Each error as text at its step, by attempt."""
    out: dict[int, list[event_pb2.Event]] = {}
    for err in tables.errors(exp_dir):
        attempt = protocol.number(err.get("attempt")) or 1
        step = protocol.number(err.get("step")) or 0
        lines = [f"**{err.get('category', 'unknown')}** in {err.get('phase', 'unknown')}: "
                 f"{err.get('cause') or err.get('error_message') or ''}"]
        if err.get("remedy"):
            lines.append(f"remedy: {err['remedy']}")
        wall = _wall(err.get("timestamp"))
        out.setdefault(int(attempt), []).append(
            event_pb2.Event(wall_time=wall, step=int(step), summary=text_pb("errors", "\n\n".join(lines))))
    return out


def _wall(timestamp: Any) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(timestamp)).timestamp()
    except ValueError:
        return time.time()


def run_dirs(out: Path, exp: str, attempt: int, rank: int | None) -> Path:
    run = out / (exp if attempt == 1 else f"{exp}-attempt{attempt}")
    return run if rank is None else run / f"rank{rank}"


def export(exp_dir: Path, out: str, progress: bool = True) -> str:
    root = Path(out)
    ranked = _ranked(exp_dir)
    cols_by_rank = columns.read_ranks(exp_dir) if ranked else {0: columns.read(exp_dir)}
    home = cols_by_rank[min(cols_by_rank)]
    system = _split(tables.system(home))
    errors = _error_events(exp_dir)
    _clear(root, exp_dir.name)
    wall0 = home.t0 or time.time()
    with progress_bar(progress, f"tensorboard: {exp_dir.name}") as advance:
        for rank, cols in cols_by_rank.items():
            for attempt, rows in _split(tables.metrics(cols)).items():
                target = RecordFile(run_dirs(root, exp_dir.name, attempt, rank if ranked else None) / FILE, wall0)
                for event in _header_events(exp_dir, wall0):
                    target.write(event)
                for n, event in enumerate(scalar_events(rows)):
                    target.write(event)
                    if n % 65536 == 65535:
                        advance(65536)
                if cols is home:
                    for event in scalar_events(system.get(attempt, {"step": np.empty(0), "time": np.empty(0)}),
                                               "system/"):
                        target.write(event)
                    for event in errors.get(attempt, []):
                        target.write(event)
                target.close()
    return str(run_dirs(root, exp_dir.name, 1, None))


def _ranked(exp_dir: Path) -> bool:
    summary = tables.summary(exp_dir)
    return bool(summary.get("ranks")) or layout.is_multi_node(exp_dir)


def _clear(root: Path, exp: str) -> None:
    """The runs an earlier export of ``exp`` wrote (its attempts may have been fewer or more)."""
    for run in [root / exp, *root.glob(f"{exp}-attempt*")]:
        for stale in run.rglob(FILE):
            stale.unlink()
        for folder in sorted((p for p in run.rglob("*") if p.is_dir()), reverse=True):
            if not any(folder.iterdir()):
                shutil.rmtree(folder)
