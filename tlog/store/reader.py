"""Streaming readers of an experiment directory: never the whole history in memory.

A reader may run while the supervisor appends, or after a crash left a half
line at the end: an incomplete or malformed line is skipped and counted.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlog import protocol
from tlog.store import layout

CHUNK = 1 << 20


@dataclass
class ReadStats:
    """What a read skipped, so reports can say so instead of hiding it."""

    malformed: int = 0
    partial_tail: bool = False
    end: int = 0  # byte offset just past the last complete line read


def iter_events(exp_dir: Path, stats: ReadStats | None = None, start: int = 0,
                name: str = layout.EVENTS, skip: tuple[bytes, ...] = ()) -> Iterator[dict]:
    """Every complete, well-formed event of ``events.jsonl`` (or of the events file ``name``), in order (from
    byte ``start``, a line start); lines holding one of ``skip`` (e.g. ``b'"kind":"metrics"'``) are not parsed,
    for readers that want the rare events of a long run."""
    stats = stats if stats is not None else ReadStats()
    loads = protocol.loads
    lines = _lines(exp_dir / name, start, stats) if not skip else _lines_without(exp_dir / name, skip, start, stats)
    for line, complete in lines:
        if not complete:
            stats.partial_tail = True
            return
        try:
            event = loads(line)
        except (protocol.JSONDecodeError, ValueError):
            stats.malformed += 1
            continue
        if event.__class__ is dict and "kind" in event and event.get("data").__class__ is dict:
            yield event
        else:
            stats.malformed += 1


def iter_all_events(exp_dir: Path, stats: ReadStats | None = None, start: int = 0,
                    skip: tuple[bytes, ...] = ()) -> Iterator[dict]:
    """The events of every node of the run, merged by time; a single-node run's are ``iter_events``'s.

    Each node's supervisor appends its own file in time order, so a k-way merge keeps the whole run in
    order while holding one event per node.  ``start`` (a byte offset) only means something for one file.
    """
    nodes = layout.node_ids(exp_dir)
    if not any(nodes):
        return iter_events(exp_dir, stats, start, skip=skip)
    if start:
        raise ValueError("a byte offset cannot resume a merge of several nodes' events")
    stats = stats if stats is not None else ReadStats()
    files = [iter_events(exp_dir, stats, name=layout.node_file(layout.EVENTS, n), skip=skip) for n in nodes]
    return heapq.merge(*files, key=_event_time)


def _event_time(event: dict) -> float:
    t = event.get("t")
    return t if t.__class__ in (float, int) else 0.0


def _lines(path: Path, start: int = 0, stats: ReadStats | None = None) -> Iterator[tuple[bytes, bool]]:
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError:
        return
    with f:
        f.seek(start)
        rest = b""
        while chunk := f.read(CHUNK):
            parts = (rest + chunk).split(b"\n")
            rest = parts.pop()
            for part in parts:
                if part:
                    yield part, True
        if stats is not None:
            stats.end = f.tell() - len(rest)
        if rest.strip():
            yield rest, False


def _lines_without(path: Path, skip: tuple[bytes, ...], start: int, stats: ReadStats) -> Iterator[tuple[bytes, bool]]:
    """``_lines`` less those holding one of ``skip``, filtered a chunk at a time (a fifth of the per-line cost)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError:
        return
    with f:
        f.seek(start)
        rest = b""
        while chunk := f.read(CHUNK * 8):
            parts = (rest + chunk).split(b"\n")
            rest = parts.pop()
            for s in skip:
                parts = [part for part in parts if s not in part]
            for part in parts:
                if part:
                    yield part, True
        stats.end = f.tell() - len(rest)
        if rest.strip() and not any(s in rest for s in skip):
            yield rest, False


def read_json(path: Path, default: Any = None) -> Any:
    """A small JSON file of the directory, or ``default`` when missing or corrupt."""
    try:
        return protocol.loads(path.read_bytes())
    except (OSError, protocol.JSONDecodeError, ValueError):
        return default
