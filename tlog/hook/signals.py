"""The steps held in the probe's window reach the supervisor before a termination signal ends the process.

``tlog run`` forwards SIGTERM, SIGHUP and SIGINT to the run; a scheduler's preemption and a closed terminal
send them too.  Their default action ends the process without ``atexit``, so the steps since the probe's last
report (and the held ``tlog.log`` calls) would be lost.  The hook therefore stands in front of these signals:
its handler sends what is held, then does exactly what would have happened without tlog: the script's own
handler runs, or the default action (the process dies of the signal, its exit status unchanged).  A handler
the script installs later is kept, not replaced: ``signal.signal`` and ``signal.getsignal`` are wrapped so the
script sets and reads its own handler while the hook's stays in front of it.  An ignored signal stays
ignored.  SIGINT's default needs no help: its ``KeyboardInterrupt`` unwinds through ``atexit``, which sends
what is held.

A signal lands between any two bytecodes, the probe's own included; when the script's handler lets the
process go on and the probe was interrupted mid-update, nothing is sent now (its next report, or the exit,
sends it): a torn window must not switch reporting off for the rest of the run.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT) if isinstance(s, int))
_HOOK_DIR = os.path.dirname(os.path.abspath(__file__))

_real_signal = signal.signal
_real_getsignal = signal.getsignal
_script: dict[int, Any] = {}  # the handler the script sees for each signal the hook stands in front of
_flush: Callable[[], None] | None = None


def install(flush: Callable[[], None]) -> None:
    """Stand in front of SIGTERM/SIGHUP/SIGINT with ``flush`` (main thread, at start-up); idempotent."""
    global _flush
    _flush = flush
    for signum in SIGNALS:
        if signum in _script:
            continue
        current = _real_getsignal(signum)
        if current is None:  # a handler not set from Python: left alone
            continue
        _script[signum] = current
        _real_signal(signum, _front(current))
    signal.signal = _signal  # type: ignore[assignment]  # the same signature, typed loosely
    signal.getsignal = _getsignal  # type: ignore[assignment]


def _signal(signum: Any, handler: Any) -> Any:
    """``signal.signal`` as the script knows it: returns, and later calls, the script's own handler."""
    if signum not in _script:
        return _real_signal(signum, handler)
    previous = _script[signum]
    _real_signal(signum, _front(handler))  # its errors, its checks
    _script[signum] = handler
    return previous


def _front(handler: Any) -> Any:
    """What the process really installs: the hook's handler, except where it has nothing to add.  An ignored
    signal stays ignored; Python's own SIGINT handler raises KeyboardInterrupt, whose unwinding runs the
    probe's exit report anyway (and the user's traceback keeps no frame of tlog's)."""
    ignored = not callable(handler) and handler == signal.SIG_IGN  # the enum member or its plain int
    return handler if ignored or handler is signal.default_int_handler else _handler


def _getsignal(signum: Any) -> Any:
    return _script[signum] if signum in _script else _real_getsignal(signum)


def _handler(signum: int, frame: FrameType | None) -> None:
    action = _script.get(signum, signal.SIG_DFL)
    if not callable(action) or not _in_hook(frame):  # dying now, or the probe is not mid-update
        try:
            if _flush is not None:
                _flush()
        except Exception:  # noqa: BLE001 - the script's handler or the default action still happens
            pass
    if callable(action):
        action(signum, frame)
        return
    if action == signal.SIG_IGN:
        return
    _real_signal(signum, signal.SIG_DFL)  # the default action: the process dies of this signal
    signal.raise_signal(signum)
    _real_signal(signum, _handler)  # a default that does not end the process (none of these): stand in again


def _in_hook(frame: FrameType | None) -> bool:
    """Whether the interrupted bytecode is the hook's own (its updates run in its own frames; a wrapper
    waiting on torch's function is not mid-update)."""
    return frame is not None and frame.f_code.co_filename.startswith(_HOOK_DIR)
