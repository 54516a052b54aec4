"""Each metric of a run as flat float64 columns, derived from events.jsonl so reports stay fast on long runs.

Why: a plot of a 1,000,000-step run cannot parse two million JSON lines in its budget (about 3 µs each),
while reading a few float64 files takes milliseconds.  events.jsonl stays the source of truth: the columns
remember how far into it they reach (byte offset, inode and the bytes just before the offset), are extended
from there when it grew, and rebuilt from scratch when it no longer matches.

Layout of ``<exp>/.tlog/columns/``::

    index.json   offset reached, series (name -> file id, points on disk, the last point still pending),
                 markers (errors, restarts, checkpoint saves), and the scan position (step, epoch, total_batches)
    <id>.f8      one series: rows of (step, epoch, t, value), native float64, append-only
    lock         flock: one updater at a time

A series has one point per step: when two metrics events of one step carry the same metric (the probe's
loss, then the script's own ``tlog.log(loss=...)``), the explicit value wins over the auto-captured one
(``tlog.store.stepmerge``); so each series' last point stays pending (in index.json) until the next step.
Resource samples become ``system/<key>`` series placed at the step and epoch reached when they were taken.

Who updates: the writer every few seconds and at close, within a small time budget (so a run logging at
a usual rate is indexed as it goes), and any report that finds them behind.  A report that cannot take the lock, or
cannot write the directory, scans the rest into memory instead.  Building uses only the standard library
(the writer may run inside the training process); ``read`` uses numpy.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tlog import protocol
from tlog.store import layout, safefile, stepmerge
from tlog.store.safefile import write_json

VERSION = 2
DIRNAME = ".tlog/columns"
CHUNK = 1 << 22
BUDGET_CHUNK = 1 << 19
MAX_MARKERS = 1000
SYSTEM = "system/"
_SYSTEM_KEY = re.compile(r"^(rss_mb|rss_max_mb|mem_limit_mb|gpu\d+_(used|max|total)_mb)$")
_CONTEXT = frozenset({"total_batches", "total_epochs"})
_EXPLICIT, _HAS_STEP = 1, 2
_NAN = math.nan


class _Series:
    """Points of one series added by this scan (interleaved step, epoch, t, value), and its pending point."""

    __slots__ = ("buf", "flags", "id", "n", "pending")

    def __init__(self, sid: int, n: int = 0, pending: tuple | None = None, flags: int = 0) -> None:
        self.id = sid
        self.n = n
        self.buf = array.array("d")
        self.pending = pending
        self.flags = flags


class _Rows:
    """The step, epoch and time columns of a window's points, interleaved once for all its series."""

    __slots__ = ("n", "template")

    def __init__(self, rows: list, epochs: list[float], t: float) -> None:
        self.n = n = len(rows)
        self.template = template = array.array("d", bytes(32 * n))
        template[0::4] = array.array("d", rows)
        template[1::4] = array.array("d", epochs)
        template[2::4] = array.array("d", [t]) * n

    def points(self, values: array.array) -> array.array:
        points = array.array("d", self.template)
        points[3::4] = values
        return points


class Scan:
    """The fold of events into series; its state round-trips through index.json between updates."""

    def __init__(self, index: dict | None = None, rank: int = 0) -> None:
        self.rank = rank  # whose metrics: the run's own series are rank 0's (and those of events with no rank)
        index = index or {}
        pos = index.get("pos", {})
        self.offset: int = index.get("events_bytes", 0)
        self.t0: float | None = pos.get("t0")
        self.step: int | None = pos.get("step")
        self.epoch: float = _num(pos.get("epoch"))
        self.total_batches: float | None = pos.get("total_batches")
        self.events: int = pos.get("events", 0)
        self.attempt: int | None = pos.get("attempt")
        self.markers: dict[str, list[dict]] = {"errors": [], "attempts": [], "checkpoints": [],
                                                **index.get("markers", {})}
        self.series: dict[str, _Series] = {}
        for name, s in index.get("series", {}).items():
            pending = s.get("pending")
            self.series[name] = _Series(s["id"], s["n"], None if pending is None else tuple(map(_num, pending[:4])),
                                        0 if pending is None else pending[4])

    # -- folding ------------------------------------------------------------------------
    def feed(self, event: dict) -> None:
        if self.t0 is None:
            self.t0 = event.get("t")
        kind = event["kind"]
        if kind == "metrics":
            self._metrics(event)
        elif kind == "system":
            self._system(event)
        elif kind == "error" and "update_of" not in event["data"]:
            self._marker("errors", event, category=event["data"].get("category"))
        elif kind == "checkpoint":
            self._marker("checkpoints", event)
        elif kind == "attempt" and event["data"].get("event") == "start" and (event["data"].get("attempt") or 1) > 1:
            self._marker("attempts", event, attempt=event["data"].get("attempt"))

    def _metrics(self, event: dict) -> None:
        rank = event.get("rank")
        if rank is not None and rank != self.rank:
            return
        self.events += 1
        attempt = event.get("attempt")
        if attempt != self.attempt:
            self._new_attempt(attempt)
        step = event.get("step")
        flags = _EXPLICIT if stepmerge.is_explicit(event) else 0
        if step is None:
            step = self.step if self.step is not None else self.events
        else:
            flags |= _HAS_STEP
            self.step = step
        data = event["data"]
        tb = data.get("total_batches")
        if tb.__class__ is int and tb > 0:
            self.total_batches = tb
        epoch = event.get("epoch")
        if epoch is not None:
            batch = event.get("batch")
            tb = self.total_batches
            self.epoch = epoch + batch / tb if batch is not None and tb else float(epoch)
        steps = event.get("steps")
        if steps is not None:
            self._window(event, steps)
        t, epoch, all_series = event["t"], self.epoch, self.series
        for key, raw in data.items():  # the hot loop of a scan: _point inlined
            if key in _CONTEXT:
                continue
            value = raw if raw.__class__ is float else protocol.number(raw)
            if value is None:
                continue
            series = all_series.get(key) or self._new(key)
            p = series.pending
            if p is not None:
                if flags & _HAS_STEP and series.flags & _HAS_STEP and p[0] == step:
                    if stepmerge.replaces(bool(flags & _EXPLICIT), bool(series.flags & _EXPLICIT)):
                        series.pending, series.flags = (step, epoch, t, value), flags
                    continue
                series.buf.extend(p)
            series.pending, series.flags = (step, epoch, t, value), flags

    def _window(self, event: dict, steps: dict[str, list]) -> None:
        """The earlier steps of a window event (``protocol.step_rows``): their points, before the event's own.
        Each point is final but the series' last, which stays pending like any other.

        A window's points share their step, epoch and time columns: those are laid out once (``_Rows``) and
        each dense column is written into a copy at C speed (about a tenth of a per-point tuple's cost)."""
        rows = steps["step"]
        self.events += len(rows)
        epoch, batches, tb = event.get("epoch"), steps.get("batch"), self.total_batches
        if epoch is None:
            epochs = [self.epoch] * len(rows)
        elif batches is None or not tb:
            epochs = [float(epoch)] * len(rows)
        else:
            epochs = [float(epoch) if b is None else epoch + b / tb for b in batches]
        t = event["t"]
        layout = _Rows(rows, epochs, t)
        for key, column in steps.items():
            if key in ("step", "batch") or key in _CONTEXT:
                continue
            try:
                values = array.array("d", column)  # every step has a number: the usual column
            except TypeError:  # None where a step has no value, or a non-finite marker
                values = None
            if values is not None:
                points, first = layout.points(values), rows[0] if rows else None
            else:
                kept = [(step, e, t, v if v.__class__ is float else _num(v))
                        for step, e, v in zip(rows, epochs, column, strict=True) if v is not None]
                points, first = array.array("d", [x for point in kept for x in point]), kept[0][0] if kept else None
            if not points:
                continue
            series = self.series.get(key) or self._new(key)
            p = series.pending
            if p is not None and p[0] != first:
                series.buf.extend(p)
            series.buf.extend(points[:-4])
            series.pending, series.flags = tuple(points[-4:]), _HAS_STEP

    def _new_attempt(self, attempt: int | None) -> None:
        """A restart repeats steps: the last attempt's pending points are final, not merged with the new ones."""
        if self.attempt is not None:
            for series in self.series.values():
                if series.pending is not None:
                    series.buf.extend(series.pending)
                    series.pending = None
        self.attempt = attempt

    def _system(self, event: dict) -> None:
        if event.get("node"):  # a multi-node run: each node samples its own machine; the series are node 0's
            return
        step = self.step if self.step is not None else 0
        for key, value in event["data"].items():
            if value.__class__ in (int, float) and _SYSTEM_KEY.match(key):
                series = self.series.get(SYSTEM + key) or self._new(SYSTEM + key)
                if series.pending is not None:
                    series.buf.extend(series.pending)
                series.pending = (step, self.epoch, event["t"], value)

    def _new(self, name: str) -> _Series:
        series = self.series[name] = _Series(len(self.series))
        return series

    def _marker(self, kind: str, event: dict, **extra: Any) -> None:
        markers = self.markers[kind]
        if len(markers) < MAX_MARKERS:
            step = event.get("step")
            markers.append({"t": event.get("t"), "step": self.step if step is None else step,
                            "epoch": None if math.isnan(self.epoch) else self.epoch, **extra})

    # -- scanning -----------------------------------------------------------------------
    def scan(self, path: Path, deadline: float | None = None, sink: _Sink | None = None) -> bool:
        """Fold complete lines from ``offset``; stops at a chunk boundary past ``deadline``.  True when done."""
        loads, feed = protocol.loads, self.feed
        size = BUDGET_CHUNK if deadline is not None else CHUNK
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError:
            return True
        with f:
            while True:
                f.seek(self.offset)
                chunk = f.read(size)
                end = chunk.rfind(b"\n") + 1
                if end == 0:
                    if len(chunk) == size:  # one line longer than a chunk: read more of it
                        size *= 2
                        continue
                    return True
                for line in chunk[:end].split(b"\n"):
                    try:
                        event = loads(line)
                    except (protocol.JSONDecodeError, ValueError):
                        continue  # an empty or malformed line: the reports count those, the plot skips them
                    if (event.__class__ is dict and event.get("data").__class__ is dict and "kind" in event
                            and event.get("t").__class__ in (float, int)):
                        try:
                            feed(event)
                        except (TypeError, ValueError, ZeroDivisionError):
                            continue  # a hand-made event with, say, a string epoch: not drawable
                self.offset += end
                if sink is not None:
                    sink.flush(self)
                if deadline is not None and time.monotonic() > deadline:
                    return False

    def index(self, events: os.stat_result, check: bytes) -> dict:
        return {
            "version": VERSION, "byteorder": sys.byteorder, "events_bytes": self.offset,
            "events_ino": events.st_ino, "check": check.hex(),
            "pos": {"t0": self.t0, "step": self.step, "epoch": protocol.finite(self.epoch),
                    "total_batches": self.total_batches, "events": self.events,
                    "attempt": self.attempt},
            "markers": self.markers,
            "series": {name: {"id": s.id, "n": s.n + len(s.buf) // 4,
                              "pending": None if s.pending is None else [*map(protocol.finite, s.pending), s.flags]}
                       for name, s in self.series.items()},
        }


class _Sink:
    """Appends each series' new points to its file, so a long scan holds one chunk's points at a time."""

    def __init__(self, cdir: Path) -> None:
        self.dir = cdir

    def flush(self, scan: Scan) -> None:
        for series in scan.series.values():
            if series.buf:
                with safefile.open_append(self.dir / f"{series.id}.f8") as f:
                    series.buf.tofile(f)
                series.n += len(series.buf) // 4
                del series.buf[:]


def is_system_key(key: str) -> bool:
    """Whether a resource sample's ``key`` is drawn and exported (memory of the run and of each GPU)."""
    return bool(_SYSTEM_KEY.match(key))


def columns_dir(exp_dir: Path) -> Path:
    return exp_dir / DIRNAME


def update(exp_dir: Path, budget_s: float | None = None, persist: bool = True) -> Scan:
    """Bring the columns up to date with events.jsonl (within ``budget_s`` when given) and return the scan.

    With ``persist`` and the lock, new points are appended to the files and the index saved; otherwise (a
    read-only directory, another updater busy, a cache directory that is a link) they stay in the returned
    scan's buffers.
    """
    events = exp_dir / layout.EVENTS
    cdir = columns_dir(exp_dir)
    trusted = not safefile.linked(cdir, exp_dir)  # a link planted in a shared log dir: neither read nor written
    with _locked(cdir, persist and trusted) as owned:
        scan = _resume(cdir, events, owned) if trusted else Scan(None)
        deadline = None if budget_s is None else time.monotonic() + budget_s
        scan.scan(events, deadline, _Sink(cdir) if owned else None)
        if owned:
            _save(cdir, events, scan)
    return scan


@contextlib.contextmanager
def _locked(cdir: Path, wanted: bool) -> Iterator[bool]:
    """True inside when this process may write the columns (created the directory and holds the lock)."""
    fd = None
    if wanted:
        try:
            cdir.mkdir(parents=True, exist_ok=True)
            fd = os.open(cdir / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if fd is not None:
                os.close(fd)
            fd = None
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


def _resume(cdir: Path, events: Path, owned: bool) -> Scan:
    """The saved scan when it still matches events.jsonl, else an empty one (files reset when owned)."""
    index = _valid_index(cdir, events)
    if owned:
        series = (index or {}).get("series", {})
        keep = {f"{s['id']}.f8": s["n"] for s in series.values()}
        for path in cdir.glob("*.f8"):
            if path.name in keep:
                os.truncate(path, keep[path.name] * 32)  # drop points of an updater that died before its index
            else:
                path.unlink()
    return Scan(index)


def _valid_index(cdir: Path, events: Path) -> dict | None:
    try:
        index = protocol.loads((cdir / "index.json").read_bytes())
        st = events.stat()
        offset = index["events_bytes"]
        if (index.get("version") != VERSION or index.get("byteorder") != sys.byteorder
                or index.get("events_ino") != st.st_ino or offset > st.st_size
                or check_bytes(events, offset).hex() != index.get("check")):
            return None
    except (OSError, ValueError, KeyError, TypeError, protocol.JSONDecodeError):
        return None
    for s in index.get("series", {}).values():
        path = cdir / f"{s['id']}.f8"
        if not path.is_file() or path.stat().st_size < s["n"] * 32:
            return None
    return index


def check_bytes(events: Path, offset: int) -> bytes:
    """The bytes just before ``offset``: a rewritten events.jsonl of the same size and inode still differs."""
    with open(events, "rb") as f:
        f.seek(max(0, offset - 64))
        return f.read(min(offset, 64))


def _save(cdir: Path, events: Path, scan: Scan) -> None:

    write_json(cdir / "index.json", scan.index(events.stat(), check_bytes(events, scan.offset)))


def _num(value: Any) -> float:
    number = protocol.number(value)
    return _NAN if number is None else float(number)


class Columns:
    """The series of one experiment as numpy arrays of rows (step, epoch, t, value); read one at a time."""

    STEP, EPOCH, T, VALUE = range(4)

    def __init__(self, exp_dir: Path, scan: Scan) -> None:
        self.dir = columns_dir(exp_dir)
        self.scan = scan
        self.t0 = scan.t0
        self.markers = scan.markers

    @property
    def metrics(self) -> list[str]:
        return [name for name in self.scan.series if not name.startswith(SYSTEM)]

    @property
    def system(self) -> list[str]:
        return [name for name in self.scan.series if name.startswith(SYSTEM)]

    def get(self, name: str):  # -> numpy.ndarray of shape (n, 4)
        """Saved points, then those this process scanned itself, then the pending last one: read into one
        array (no concatenation of a million-row copy; not kept, so a plot holds one series at a time)."""
        import numpy as np

        series = self.scan.series[name]
        pending = [] if series.pending is None else list(series.pending)
        flat = np.empty(series.n * 4 + len(series.buf) + len(pending), dtype=np.float64)
        saved = 0
        if series.n:
            with open(self.dir / f"{series.id}.f8", "rb") as f:
                saved = (f.readinto(flat[: series.n * 4].data.cast("B")) or 0) // 32 * 4
        rest = flat[saved:saved + len(series.buf) + len(pending)]
        rest[: len(series.buf)] = np.frombuffer(series.buf, dtype=np.float64)
        rest[len(series.buf):] = pending
        flat = flat[: saved + len(series.buf) + len(pending)]
        return flat.reshape(-1, 4)


def read(exp_dir: Path) -> Columns:
    """The columns of ``exp_dir``, updated first (saved when this process may, in memory otherwise).

    A multi-node run's columns are folded in memory from every node's events merged by time: each node's
    writer sees only its own events, so no single file (nor a cache built from one) holds the run.
    """
    if layout.is_multi_node(exp_dir):
        return read_ranks(exp_dir, [0])[0]
    return Columns(exp_dir, update(exp_dir))


def read_ranks(exp_dir: Path, ranks: list[int] | None = None) -> dict[int, Columns]:
    """Each rank's series (every rank that logged, with ``None``), folded in memory in one pass over every
    node's events; resource samples and markers go to rank 0's (the lowest rank asked for), so they are
    drawn once, at rank 0's steps.

    Per-rank curves answer an occasional question (a straggler, a diverging rank), so they are not cached.
    """
    from tlog.store.reader import iter_all_events

    home = 0 if not ranks else min(ranks)
    scans = {rank: Scan(rank=rank) for rank in {home, *(ranks or ())}}
    t0 = None
    for event in iter_all_events(exp_dir):
        if event.get("t").__class__ not in (float, int):
            continue
        t0 = event["t"] if t0 is None else t0
        rank = event.get("rank")
        if event["kind"] != "metrics" or rank is None:
            scans[home].feed(event)
            continue
        scan = scans.get(rank)
        if scan is None and ranks is None:
            scan = scans[rank] = Scan(rank=rank)
        if scan is not None:
            scan.feed(event)
    for scan in scans.values():
        scan.t0 = t0
    return {rank: Columns(exp_dir, scan) for rank, scan in sorted(scans.items())}
