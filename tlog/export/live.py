"""``tlog run --export tensorboard:DIR``: the run's event files written by the supervisor as events arrive.

A team's running TensorBoard shows the run while it trains; the child pays nothing (this runs in the
supervisor, on the events it already receives).  Same runs and tags as ``tlog export --to tensorboard``:
``DIR/<exp>`` (``-attemptN`` after a restart, ``rank<r>`` below for a distributed run), ``train/`` and
``validation/`` scalars, ``system/`` resources, ``errors`` as text.  Every metrics event is written as it
comes, so a step whose metric was logged twice (the probe's loss, then the script's) shows both points
here, where ``tlog export`` keeps the explicit one; a later ``tlog export --to tensorboard --out DIR``
replaces these files with that exact record.
"""

from __future__ import annotations

import threading
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.text.summary_v2 import text_pb

from tlog import protocol
from tlog.export.tensorboard import FILE, RecordFile, run_dirs, tag
from tlog.store import columns

SKIP = frozenset({"total_batches", "total_epochs"})


def parse(spec: str) -> Path:
    """``tensorboard:DIR`` -> DIR; raises ValueError (one line) for anything else."""
    target, _, where = spec.partition(":")
    if target != "tensorboard" or not where:
        raise ValueError(f"--export {spec!r}: use tensorboard:DIR (live export supports TensorBoard)")
    return Path(where)


class LiveTensorBoard:
    """Appends one TensorBoard event per metrics event, resource sample and error; flushed per batch."""

    def __init__(self, root: Path, experiment: str, ranked: bool) -> None:
        self.root, self.experiment, self.ranked = root, experiment, ranked
        self.files: dict[tuple[int, int | None], RecordFile] = {}
        self.step = 0
        self.lock = threading.Lock()

    def feed(self, events: list[dict]) -> None:
        """Called from the reader and monitor threads with the events just written to events.jsonl."""
        with self.lock:
            touched = set()
            for window in events:
                for event in protocol.step_rows(window) if "steps" in window else (window,):
                    written = self._one(event)
                    if written is not None:
                        touched.add(written)
            for f in touched:
                f.file.flush()

    def _one(self, event: dict) -> RecordFile | None:
        kind, data, t = event.get("kind"), event.get("data"), event.get("t")
        if not isinstance(data, dict) or not isinstance(t, (int, float)):
            return None
        attempt = event.get("attempt") or 1
        if kind == "metrics":
            step = event.get("step")
            if isinstance(step, int):
                self.step = step
            values = [summary_pb2.Summary.Value(tag=tag(k), simple_value=v) for k, raw in data.items()
                      if k not in SKIP and (v := protocol.number(raw)) is not None]
            rank = event.get("rank") if self.ranked else None
            return self._write(attempt, rank, event_pb2.Event(step=self.step, wall_time=t,
                                                              summary=summary_pb2.Summary(value=values))
                               if values else None)
        if kind == "system" and not event.get("node"):
            values = [summary_pb2.Summary.Value(tag="system/" + k, simple_value=v) for k, v in data.items()
                      if isinstance(v, (int, float)) and columns.is_system_key(k)]
            return self._write(attempt, 0 if self.ranked else None,
                               event_pb2.Event(step=self.step, wall_time=t, summary=summary_pb2.Summary(value=values))
                               if values else None)
        if kind == "error" and "update_of" not in data:
            line = f"**{data.get('category', 'unknown')}** in {data.get('phase', 'unknown')}: {data.get('cause', '')}"
            return self._write(attempt, 0 if self.ranked else None,
                               event_pb2.Event(step=self.step, wall_time=t, summary=text_pb("errors", line)))
        return None

    def _write(self, attempt: int, rank: int | None, event: event_pb2.Event | None) -> RecordFile | None:
        if event is None:
            return None
        key = (attempt, rank)
        f = self.files.get(key)
        if f is None:
            path = run_dirs(self.root, self.experiment, attempt, rank) / FILE
            f = self.files[key] = RecordFile(path, event.wall_time, live=True)
        f.write(event)
        return f

    def close(self) -> None:
        with self.lock:
            for f in self.files.values():
                f.close()
            self.files.clear()
