"""Read one of the child's pipes: split events from output, hand both on.

One thread per pipe, blocking on ``os.read`` (no polling).  Work is done per
chunk, not per line: the events of a chunk go to the writer in one call and
are flushed once, which is what lets ingest keep up with a flooding child.
After a small read the thread waits 20 ms before reading again, so a child
logging a thousand small events a second is handled in tens of batches rather
than a thousand wake-ups; a flooding child fills whole reads and never waits.

Output is echoed to the terminal as soon as it is known not to be an event,
partial lines included (prompts, tqdm bars), and reaches training.log as whole
lines, with carriage-return progress collapsed to its final state.  An event
written after a partial line of output is cut out of it; the output around it
is joined back into one line for the log.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from tlog import protocol

READ_SIZE = 1 << 16
SMALL_READ = 1 << 12
COALESCE_S = 0.02
LINGER_S = 0.5  # after the child exits, how long its leftovers may keep its pipes open before they are killed
READER_JOIN_S = 2.0  # then, how long the pipes may take to close
MAX_LINE = 1 << 20
_MARKER_LEN = len(protocol.MARKER)

OnEvents = Callable[[list[dict]], None]
OnOutput = Callable[[str, list[str]], None]


class Terminal(Protocol):
    """Where the script's output goes on screen; events never reach it."""

    def passthrough(self, stream: str, data: bytes) -> None: ...


def log_text(raw: bytes) -> str:
    """A complete output line as training.log keeps it: decoded, final state of any \\r updates."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if b"\r" in raw:
        raw = raw.rsplit(b"\r", 1)[-1]
    return raw.decode("utf-8", "replace")


class LineSplitter:
    """The parsing state of one stream, independent of threads and files (tested alone)."""

    def __init__(self) -> None:
        self.partial = b""
        self.echoed = 0
        self.carry = b""
        self.malformed = 0
        self.event_lines: list[bytes] = []  # the raw lines of the events of the last feed/finish, in order

    def feed(self, chunk: bytes) -> tuple[list[dict], list[bytes], bytes]:
        """Events, complete output lines (for the log) and bytes to echo, for one chunk."""
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        self.event_lines = []
        events: list[dict] = []
        out: list[bytes] = []
        echo: list[bytes] = []
        for raw in lines:
            self._line(raw, events, out, echo)
        if len(self.partial) > MAX_LINE and protocol.find_marker(self.partial) < 0:
            self._line(self.partial, events, out, echo)
            self.partial = b""
        else:
            self._echo_partial(echo)
        return events, out, b"".join(echo)

    def finish(self) -> tuple[list[dict], list[bytes], bytes]:
        """End of stream: a last line without newline still counts."""
        events: list[dict] = []
        out: list[bytes] = []
        echo: list[bytes] = []
        self.event_lines = []
        if self.partial:
            raw, self.partial = self.partial, b""
            self._line(raw, events, out, echo)
            if echo and echo[-1].endswith(b"\n"):
                echo[-1] = echo[-1][:-1]  # the script never printed that newline
        if self.carry:
            out.append(self.carry)
            self.carry = b""
        return events, out, b"".join(echo)

    def _line(self, raw: bytes, events: list[dict], out: list[bytes], echo: list[bytes]) -> None:
        i = protocol.find_marker(raw)
        if i >= 0:
            prefix = raw[: i - 1] if i else b""
            try:
                events.append(protocol.decode(raw[i + _MARKER_LEN:]))
            except Exception:  # noqa: BLE001 - WireError; anything else is no reason to lose the stream either
                self.malformed += 1
                raw = raw.replace(protocol.SEP, b"")
            else:
                self.event_lines.append(raw)
                if len(prefix) > self.echoed:
                    echo.append(prefix[self.echoed:])
                self.echoed = 0
                self.carry += prefix
                return
        echo.append(raw[self.echoed:] + b"\n")
        self.echoed = 0
        out.append(self.carry + raw if self.carry else raw)
        self.carry = b""

    def _echo_partial(self, echo: list[bytes]) -> None:
        """Echo the unfinished line now, except anything that may be the start of an event."""
        tail = self.partial
        if not tail:
            return
        cut = tail.find(protocol.SEP)
        safe = len(tail) if cut < 0 else cut
        if self.echoed == 0 and protocol.MARKER.startswith(tail[:_MARKER_LEN]):
            safe = 0
        if safe > self.echoed:
            echo.append(tail[self.echoed:safe])
            self.echoed = safe


class StreamReader(threading.Thread):
    """Drains one pipe until EOF."""

    def __init__(self, fd: int, stream: str, on_events: OnEvents, on_output: OnOutput,
                 terminal: Terminal | None, on_chunk_done: Callable[[], None]) -> None:
        super().__init__(name=f"tlog-{stream}", daemon=True)
        self.fd = fd
        self.stream = stream
        self.on_events = on_events
        self.on_output = on_output
        self.terminal = terminal
        self.on_chunk_done = on_chunk_done
        self.splitter = LineSplitter()
        self.tail: deque[str] = deque(maxlen=200)
        self.events = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        splitter = self.splitter
        try:
            while chunk := os.read(self.fd, READ_SIZE):
                self._chunk(splitter.feed, chunk)
                if len(chunk) < SMALL_READ:
                    time.sleep(COALESCE_S)
            self._chunk(splitter.finish)
        except OSError as exc:  # the pipe itself failed: recorded, the supervisor reports it once
            self.error = exc
        finally:
            try:
                os.close(self.fd)
            except OSError:
                pass

    def _chunk(self, split: Callable[..., tuple[list[dict], list[bytes], bytes]], *chunk: bytes) -> None:
        """One chunk; a failure handling it is recorded (reported once) and the stream goes on, since a
        reader that stopped would close the pipe and kill the child on its next print."""
        try:
            self._handle(*split(*chunk))
        except Exception as exc:  # noqa: BLE001 - see above
            if self.error is None:
                self.error = exc

    def _handle(self, events: list[dict], out: list[bytes], echo: bytes) -> None:
        if echo and self.terminal is not None:
            self.terminal.passthrough(self.stream, echo)
        if out:
            lines = [log_text(raw) for raw in out]
            self.tail.extend(lines)
            self.on_output(self.stream, lines)
        if events:
            self.events += len(events)
            try:
                self.on_events(events)
            except Exception:  # noqa: BLE001 - an event the store could not take: find it, keep it as output
                self._one_by_one(events, self.splitter.event_lines)
        self.on_chunk_done()

    def _one_by_one(self, events: list[dict], raws: list[bytes]) -> None:
        """Deliver each event alone; one that still fails is kept verbatim in training.log, counted malformed."""
        for event, raw in zip(events, raws, strict=True):
            try:
                self.on_events([event])
            except Exception:  # noqa: BLE001 - that line is the culprit
                self.events -= 1
                self.splitter.malformed += 1
                self.on_output(self.stream, [log_text(raw.replace(protocol.SEP, b""))])


def open_readers(proc: subprocess.Popen, on_events: OnEvents, on_output: OnOutput, terminal: Terminal | None,
                 on_chunk_done: Callable[[], None]) -> list[StreamReader]:
    """One reader thread per pipe of ``proc``, each on a private duplicate of the pipe's fd; not started, so
    that the caller holds them before a callback can ask for them (an error record reads the stderr tail)."""
    readers = []
    for stream, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        assert pipe is not None  # spawned with both pipes
        fd = os.dup(pipe.fileno())
        pipe.close()
        readers.append(StreamReader(fd, stream, on_events, on_output, terminal, on_chunk_done))
    return readers


def drain(readers: list[StreamReader], kill_rest: Callable[[], set[int]], say: Callable[[str], None]) -> None:
    """After the child's exit: let the pipes close for a moment, kill what is left of the run (holding
    them open or not), then wait for the pipes a bounded time; a holder outside the run is not waited on."""
    _join(readers, LINGER_S)
    holding = any(r.is_alive() for r in readers)
    if left := kill_rest():
        held = " and held its output open" if holding else ""
        say(f"{len(left)} process(es) of the run outlived it{held}; killed")
    _join(readers, READER_JOIN_S)
    if any(r.is_alive() for r in readers):
        say("the run's output is held open by a process outside its tree; not waiting for it")
    for reader in readers:
        if reader.error is not None:
            say(f"reading the run's {reader.stream} failed: {reader.error!r}")
        if reader.splitter.malformed:
            say(f"{reader.splitter.malformed} malformed event line(s) on {reader.stream} kept as output")


def _join(readers: list[StreamReader], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for reader in readers:
        reader.join(max(0.0, deadline - time.monotonic()))
