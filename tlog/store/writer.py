"""The single writer of an experiment directory.

Every event is appended to events.jsonl (the source of truth) and folded into
the seed's files.  Files are appended and flushed in batches (``flush`` is
called once per chunk read from the child); the small JSON files are replaced
atomically, errors and config when they change, progress and the live summary
at most once a second.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from tlog import protocol
from tlog.store import layout, redact, safefile, snapshot
from tlog.store.csvfile import CsvTable
from tlog.store.metrics_rows import MetricsRows
from tlog.store.summary import SummaryBuilder, merge_error_update

PROGRESS_EVERY_S = 1.0
SUMMARY_EVERY_S = 5.0


def write_json(path: Path, obj: Any) -> None:
    """A document of the record: replaced atomically, kept for later when the disk fails (safefile)."""
    safefile.write_record(path, protocol.dumps(obj))


def log_line(t: float, tag: str, text: str) -> str:
    """``2026-11-30 12:00:00.123 | text``: tag '|' stdout, '!' stderr, '[tlog]' tlog."""
    return f"{datetime.fromtimestamp(t).isoformat(' ', 'milliseconds')} {tag} {text}\n"


class ExperimentWriter:
    def __init__(self, exp_dir: str | Path, experiment: str | None = None, *, node: int | None = None,
                 ranked: bool = False, keep_secrets: bool = False) -> None:
        """``node``: this node's number in a multi-node run (its files are ``events.node<k>.jsonl``...; the
        report caches are then left to the reports, which merge the nodes).  ``ranked``: a distributed run,
        whose training_metrics.csv has a ``rank`` column from its first row.  ``keep_secrets``: store
        credential-named values as given (``tlog run --keep-secrets``; by default ``redact`` masks them)."""
        self.dir = Path(exp_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.experiment = experiment or self.dir.name
        self.node = node
        self._lock = threading.Lock()
        self._events = safefile.open_record(self._path(layout.EVENTS))
        self._log = safefile.open_record(self._path(layout.LOG))
        columns = (*MetricsRows.COLUMNS, "rank") if ranked else MetricsRows.COLUMNS
        self.rows = MetricsRows(CsvTable(self._path(layout.METRICS_CSV), columns))
        self._system: CsvTable | None = None
        self.summary = SummaryBuilder(self.experiment)
        self.errors: list[dict] = []
        self.config: dict[str, Any] = {}
        self.progress: dict[str, Any] = {"experiment": self.experiment, "status": "running"}
        self.phases: deque[dict] = deque(maxlen=50)
        self._phase_t = 0.0
        self._next_progress = 0.0
        self._next_summary = 0.0
        self.closed = False
        self.keep_secrets = keep_secrets

    def _path(self, name: str) -> Path:
        return self.dir / layout.node_file(name, self.node)

    # -- events ---------------------------------------------------------------------
    def write_events(self, events: Sequence[dict]) -> None:
        """Append events and fold them into the derived files."""
        with self._lock:
            if self.closed:
                return
            if not self.keep_secrets:
                events = [e if e["kind"] not in redact.KINDS else redact.event(e) for e in events]
            dumps = protocol.dumps
            self._events.write(b"".join([dumps(event) + b"\n" for event in events]))
            add, fold = self.summary.add, self._fold
            for event in events:
                add(event)
                try:
                    fold(event)
                except OSError as exc:  # a derived file's new header or first row: the disk decides (safefile)
                    safefile.FAULTS.absorb(exc.filename or self.dir, exc)

    def _fold(self, event: dict) -> None:
        kind = event["kind"]
        if kind == "metrics":
            if "steps" in event:  # a window of steps: one CSV row each, appended with the chunk's others
                for row in protocol.step_rows(event):
                    self.rows.add(row)
            else:
                self.rows.add(event)
        elif kind == "system":
            self._system_row(event)
        elif kind in ("phase", "checkpoint"):
            self.phases.append({"kind": kind, "t": event["t"], "step": event.get("step"),
                                "epoch": event.get("epoch"), **event["data"]})
            self._track(event)
        elif kind == "config" and event.get("rank") in (None, 0):  # the other ranks repeat rank 0's
            self.config.update(event["data"])
            write_json(self._path(layout.CONFIG), self.config)
        elif kind == "error":
            data = event["data"]
            if "update_of" not in data:
                self.errors.append(data)
            elif not merge_error_update(self.errors, data):
                return
            write_json(self._path(layout.ERRORS), self.errors)
        elif kind == "attempt":
            self.progress["status"] = self.summary.status
            self.progress["attempt"] = event["data"].get("attempt")
            if event["data"].get("event") == "exit":
                self.rows.complete()  # the attempt's last rows are complete; a restart never merges into them

    def _track(self, event: dict) -> None:
        progress = self.progress
        for key in ("step", "epoch", "batch"):
            value = event.get(key)
            if value is not None:
                progress[key] = value
        if event["kind"] == "phase":
            progress["phase"] = event["data"].get("phase")
            self._phase_t = event["t"]

    def position(self) -> dict[str, Any]:
        """Where the run is now: step, epoch, batch of the newest row, and the last reported phase."""
        with self._lock:
            row = self.rows.pending or self.rows.last_row or {}
            pos = {key: row.get(key) for key in ("step", "epoch", "batch")}
            # a phase event marks entering a phase; a metrics row after it means the phase is over
            pos["phase"] = self.progress.get("phase") if self._phase_t >= self.rows.last_t else None
            pos["phase_step"] = self.progress.get("step") if pos["phase"] is not None else None
            return pos

    def _system_row(self, event: dict) -> None:
        data = event["data"]
        if self._system is None:
            self._system = CsvTable(self._path(layout.SYSTEM_CSV), ["timestamp", *data])
        self._system.append({"timestamp": _iso(event["t"]), **data})
        self.rows.resources(data)

    # -- output ---------------------------------------------------------------------
    def write_output(self, tag: str, lines: Iterable[str], t: float | None = None) -> None:
        """The script's own lines (tag '|' or '!'), timestamped into training.log."""
        t = time.time() if t is None else t
        with self._lock:
            if not self.closed:
                self._log.writelines(log_line(t, tag, line) for line in lines)

    def message(self, text: str) -> None:
        """tlog's own message, for training.log (appended to the file after ``close``: what a notifier did)."""
        with self._lock:
            if self.closed:
                with safefile.open_record(self._path(layout.LOG)) as f:
                    f.write(log_line(time.time(), "[tlog]", text))
                return
        self.write_output("[tlog]", [text])

    # -- persistence ----------------------------------------------------------------
    def flush(self) -> None:
        """End of a batch: push buffers to the OS, refresh the small JSON files when due."""
        with self._lock:
            if self.closed:
                return
            self._events.flush()
            self._log.flush()
            self.rows.flush()
            if self._system is not None:
                self._system.flush()
            self._record_gaps()
            now = time.monotonic()
            if now >= self._next_progress:
                self._next_progress = now + PROGRESS_EVERY_S
                self._write_progress()
            if now >= self._next_summary:
                self._next_summary = now + SUMMARY_EVERY_S
                write_json(self._path(layout.SUMMARY), self.summary.result())
                if self.node is None and safefile.FAULTS.failing is None:
                    snapshot.refresh(self.dir, self._events.tell(), self.summary)

    def _write_progress(self) -> None:
        """Position from the newest metrics row (kept per event by MetricsRows, read here once a second)."""
        row = self.rows.pending or self.rows.last_row
        if row is not None:
            for key in ("step", "epoch", "batch", "total_batches"):
                if row.get(key) is not None:
                    self.progress[key] = row[key]
            self.progress["updated"] = row.get("_t") or row.get("timestamp")
        self.progress["phases"] = list(self.phases)
        self.progress["written"] = time.time()
        write_json(self._path(layout.PROGRESS), self.progress)

    def close(self, status: str | None = None) -> dict:
        """Flush everything, write the final summary; returns it."""
        with self._lock:
            if self.closed:
                return self.summary.result()
            self.rows.close()
            if self._system is not None:
                self._system.close()
            if status is not None:
                self.summary.status = status
            self.progress["status"] = self.summary.status
            self._write_progress()
            result = self.summary.result()
            write_json(self._path(layout.SUMMARY), result)
            if not self._path(layout.ERRORS).exists():
                write_json(self._path(layout.ERRORS), self.errors)
            if not self._path(layout.CONFIG).exists():
                write_json(self._path(layout.CONFIG), self.config)
            self._record_gaps()
            events_bytes = self._events.tell()
            self._events.close()
            self._log.close()
            self.closed = True
            if safefile.FAULTS.failing is not None:
                safefile.FAULTS.report(f"{safefile.FAULTS.failing} could not be written to the end: "
                                       f"{safefile.FAULTS.lost} bytes of the record are lost")
            elif self.node is None:
                snapshot.refresh(self.dir, events_bytes, self.summary)
            return result

    def _record_gaps(self) -> None:
        """Each finished outage of the disk becomes a warning event: the record says where it has a hole."""
        for gap in safefile.FAULTS.take_gaps():
            event = {"kind": "warning", "t": gap["to"], "attempt": self.progress.get("attempt"),
                     "data": {"category": "system", "metric": "store", "value": gap["lost_bytes"],
                              "message": f"{gap['path']} could not be written for {gap['to'] - gap['from']:.1f} s "
                                         f"({gap['lost_bytes']} bytes lost)", **gap}}
            self._events.write(protocol.dumps(event) + b"\n")
            self.summary.add(event)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t).isoformat(timespec="milliseconds")
