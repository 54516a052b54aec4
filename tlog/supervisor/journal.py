"""The run's one way into the store and onto the screen, for tlog's own events and the child's.

Every event reaches the experiment's single writer, the live TensorBoard export (``--export``) and the
view state through here, stamped with its attempt and node, so no caller repeats that fan-out.  The reader
threads, the monitor's thread and the main thread all call it; the writer serialises them.  Its lifetime
is the run's: made once the experiment directory is claimed, closed by the session at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from tlog.store.writer import ExperimentWriter
from tlog.supervisor.display import Display
from tlog.views.viewstate import ViewState


class Feed(Protocol):
    """A live export of the events as they come (``tlog.export.live.LiveTensorBoard``)."""

    def feed(self, events: list[dict]) -> None: ...

    def close(self) -> None: ...


class Journal:
    """Writes, exports and shows events; ``attempt`` is the attempt tlog's own events belong to (the round
    running now, or the last one), set by the attempt that starts a round."""

    def __init__(self, writer: ExperimentWriter, display: Display, state: ViewState, *, node: int | None = None,
                 live: Feed | None = None, clock: Callable[[], float] = time.time) -> None:
        self.writer = writer
        self.display = display
        self.state = state
        self.node = node
        self.live = live
        self.clock = clock
        self.attempt = 0
        self._said: set[str] = set()

    def emit(self, kind: str, data: dict[str, Any], **context: object) -> None:
        """An event of the supervisor's own, into the same stream as the child's (flushed at once)."""
        event = {"kind": kind, "t": self.clock(), "attempt": self.attempt, **context, "data": data}
        if self.node is not None:
            event["node"] = self.node
        self.writer.write_events([event])
        self.writer.flush()
        if self.live is not None:
            self.live.feed([event])
        self.state.apply(event)

    def say(self, text: str) -> None:
        """tlog's own message: on screen and in training.log."""
        self.display.message(text)
        self.writer.message(text)

    def say_once(self, text: str) -> None:
        """A message that every process of the run would repeat (each torchrun worker's hello): said once."""
        if text not in self._said:
            self._said.add(text)
            self.say(text)

    def deliver(self, events: list[dict]) -> None:
        """The child's events, already stamped (the reader flushes once per chunk)."""
        self.writer.write_events(events)
        if self.live is not None:
            self.live.feed(events)
        if self.display.wants_state:
            apply = self.state.apply
            for event in events:
                apply(event)

    def output(self, stream: str, lines: list[str]) -> None:
        """The child's complete output lines: into training.log, and to a display that draws lines."""
        self.writer.write_output("|" if stream == "stdout" else "!", lines)
        if self.display.wants_lines:
            self.display.lines(stream, lines)
