"""What ``tlog run`` shows while the child runs: the live panel, or plain pass-through.

On a terminal the script's complete lines are printed through the live
console, above the panel (carriage-return progress collapsed, so tqdm does not
flood it).  Anywhere else (CI, nohup, a pipe) the script's bytes pass through
untouched on the matching stream, and tlog adds one status line to stderr every
``status_every`` seconds.  Both take tlog's own messages; ``--quiet`` shows nothing
of the script.
"""

from __future__ import annotations

import os
import sys
import threading

from rich.console import Console

from tlog.views.panel import LivePanel, status_line
from tlog.views.viewstate import ViewState


class Display:
    """Base: the view-state every display folds events into, and tlog's own messages."""

    wants_lines = False

    def __init__(self, state: ViewState) -> None:
        self.state = state

    @property
    def wants_state(self) -> bool:
        """Whether events must be folded into the view-state (a display that never shows it skips that)."""
        return True

    def passthrough(self, stream: str, data: bytes) -> None:
        """Raw output bytes as they arrive (partial lines included)."""

    def lines(self, stream: str, lines: list[str]) -> None:
        """Complete output lines, for displays that draw lines rather than bytes."""

    def message(self, text: str) -> None:
        sys.stderr.write(f"[tlog] {text}\n")
        sys.stderr.flush()

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class QuietDisplay(Display):
    """--quiet: tlog's messages only, so the view-state need not be kept."""

    @property
    def wants_state(self) -> bool:
        return False


class PlainDisplay(Display):
    """Byte-for-byte pass-through, plus a periodic status line on stderr."""

    def __init__(self, state: ViewState, status_every: float = 30.0) -> None:
        super().__init__(state)
        self.status_every = status_every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._broken = False
        self._mid_line = False

    def passthrough(self, stream: str, data: bytes) -> None:
        if self._broken or not data:
            return
        fd = 1 if stream == "stdout" else 2
        if fd == 2:
            self._mid_line = not data.endswith(b"\n")
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError:
            self._broken = True  # our stdout went away (closed pipe): the run itself goes on

    def message(self, text: str) -> None:
        self._line(f"[tlog] {text}")

    def _line(self, text: str) -> None:
        """On a line of its own, even when the script left a partial line (a progress bar) on stderr."""
        if self._mid_line:
            self._mid_line = False
            text = "\n" + text
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.status_every):
            self._line(status_line(self.state))

    @property
    def wants_state(self) -> bool:
        return self.status_every > 0

    def __enter__(self) -> PlainDisplay:
        if self.status_every > 0:
            self._thread = threading.Thread(target=self._loop, name="tlog-status", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


class PanelDisplay(Display):
    """The Rich Live panel pinned under the script's output."""

    wants_lines = True

    def __init__(self, state: ViewState, console: Console, refresh_per_second: float = 4.0) -> None:
        super().__init__(state)
        self.console = console
        self.panel = LivePanel(state, console, refresh_per_second)

    def lines(self, stream: str, lines: list[str]) -> None:
        self.panel.print_output(stream, "\n".join(lines))

    def message(self, text: str) -> None:
        self.console.print(f"[tlog] {text}", markup=False, highlight=False)

    def __enter__(self) -> PanelDisplay:
        self.panel.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.panel.__exit__(None, None, None)


def make_display(state: ViewState, *, quiet: bool, panel: bool | None, status_every: float,
                 refresh_per_second: float = 4.0) -> Display:
    """``panel`` None means: the panel when stdout is an interactive terminal."""
    if quiet:
        return QuietDisplay(state)
    console = Console(stderr=False)
    if panel is None:
        panel = console.is_terminal and not console.is_dumb_terminal
    if panel:
        return PanelDisplay(state, console, refresh_per_second)
    return PlainDisplay(state, status_every)
