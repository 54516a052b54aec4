"""``tlog watch``: the live panel for a run started elsewhere, rebuilt from its experiment directory alone.

Everything comes from files the supervisor appends to (``events.jsonl``,
``training.log``), so a watcher needs no connection to the running process and
may come and go; it reads only what was appended since its last poll.  A multi-node run's nodes each
append their own ``events.node<k>.jsonl``: every node's file is followed (a node that starts late is picked
up when its file appears) and each poll's events are applied in time order.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from tlog import statuses
from tlog.protocol import JSONDecodeError, loads
from tlog.store.layout import node_file, node_ids
from tlog.views.panel import LivePanel, render
from tlog.views.viewstate import ViewState

EVENTS_FILE = "events.jsonl"
LOG_FILE = "training.log"
SUMMARY_FILE = "training_summary.json"
LOG_BACKLOG_BYTES = 64 * 1024  # the output pane shows a few lines: no need to read a huge log from the top
CHUNK_BYTES = 1 << 22
SETTLE_S = 1.5  # an exit followed by no new attempt within this long ends the run
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:[.,]\d+)? (\||!|\[tlog\]) ?(.*)$")
LOG_STREAMS = {"|": "stdout", "!": "stderr", "[tlog]": "tlog"}
LIVE_STATUSES = frozenset(statuses.LIVE)


class Follower:
    """The complete lines appended to a file since the last call.

    A half-written last line stays in ``partial`` until its newline arrives, so
    a reader never parses an event the writer has not finished.
    """

    def __init__(self, path: Path, backlog: int | None = None) -> None:
        self.path = path
        self.backlog = backlog
        self.offset: int | None = None if backlog is not None else 0
        self.partial = b""
        self._skip_first = False

    def lines(self) -> Iterator[bytes]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if self.offset is None:  # first look at a file read from its tail: drop the cut first line
            self.offset = max(0, size - (self.backlog or 0))
            self._skip_first = self.offset > 0
        if size < self.offset:  # truncated or replaced: start over
            self.offset, self.partial = 0, b""
        if size == self.offset:
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            while chunk := f.read(CHUNK_BYTES):
                self.offset += len(chunk)
                *complete, self.partial = (self.partial + chunk).split(b"\n")
                if self._skip_first and complete:
                    complete, self._skip_first = complete[1:], False
                yield from complete


def parse_log_line(raw: bytes) -> tuple[str, str]:
    """(stream, text) of a training.log line; a line in no known shape is shown whole as stdout."""
    line = raw.decode("utf-8", errors="replace").rstrip("\r")
    match = LOG_LINE.match(line)
    if match is None:
        return "stdout", line
    marker, text = match.groups()
    return LOG_STREAMS[marker], f"[tlog] {text}" if marker == "[tlog]" else text


def final_status(exp_dir: Path) -> str | None:
    """The status in training_summary.json once the supervisor has written a final one."""
    try:
        summary = loads((exp_dir / SUMMARY_FILE).read_bytes())
    except (OSError, JSONDecodeError, ValueError):
        return None
    status = summary.get("status") if isinstance(summary, dict) else None
    return status if isinstance(status, str) and status not in LIVE_STATUSES else None


class Watcher:
    """Feeds one experiment directory into a ViewState and decides when its run is over."""

    def __init__(self, exp_dir: Path, settle_s: float = SETTLE_S) -> None:
        self.exp_dir = exp_dir
        self.settle_s = settle_s
        self.state = ViewState(name=exp_dir.name)
        self.events = Follower(exp_dir / EVENTS_FILE)
        self.node_events: dict[int, Follower] = {}  # nodes 1, 2, ... of a multi-node run
        self.log = Follower(exp_dir / LOG_FILE, backlog=LOG_BACKLOG_BYTES)
        self._ended_seen: float | None = None

    def poll(self) -> None:
        for node in node_ids(self.exp_dir):
            if node and node not in self.node_events:
                self.node_events[node] = Follower(self.exp_dir / node_file(EVENTS_FILE, node))
        events = [event for follower in (self.events, *self.node_events.values()) for event in _parse(follower)]
        if self.node_events:
            events.sort(key=_time)
        for event in events:
            self.state.apply(event)
        for raw in self.log.lines():
            self.state.apply_output(*parse_log_line(raw))

    def over(self) -> bool:
        """The summary says so, or the last attempt exited and no new one started within settle_s."""
        status = final_status(self.exp_dir)
        if status is not None:
            self.state.status = status
            if self.state.end_time is None:
                self.state.end_time = self.state.last_time
            return True
        state = self.state
        if not state.ended or state.end_time is None:
            self._ended_seen = None
            return False
        if self._ended_seen is None:
            self._ended_seen = time.monotonic()
        waited = max(time.time() - state.end_time, time.monotonic() - self._ended_seen)
        return waited >= self.settle_s


def _time(event: dict) -> float:
    t = event.get("t")
    return float(t) if isinstance(t, (int, float)) else 0.0


def _parse(follower: Follower) -> Iterator[dict]:
    for raw in follower.lines():
        try:
            event = loads(raw)
        except (JSONDecodeError, ValueError):
            continue
        if isinstance(event, dict):
            yield event


def watch_experiment(exp_dir: Path, console: Console, refresh_hz: float = 4, poll_s: float = 0.25,
                     settle_s: float = SETTLE_S) -> int:
    """Show the panel until the run ends (0), or say why not (1; 130 on Ctrl-C)."""
    if not exp_dir.is_dir():
        print(f"tlog watch: no experiment directory at {exp_dir}", file=sys.stderr)
        return 1
    watcher = Watcher(exp_dir, settle_s)
    watcher.poll()
    if watcher.over():
        console.print(render(watcher.state, console.width))
        return 0
    try:
        with LivePanel(watcher.state, console, refresh_hz):
            while not watcher.over():
                time.sleep(poll_s)
                watcher.poll()
    except KeyboardInterrupt:
        return 130
    return 0
