"""Crash capture inside the child: the excepthook, faulthandler, and the stack-dump signal.

The hook only reports; deciding that the run failed is the supervisor's job
(from the exit status), so a crash event is evidence, not a verdict.  Native
crashes (SIGSEGV, SIGABRT, SIGBUS...) leave no exception: faulthandler writes
the Python stacks to stderr, where the supervisor's stderr tail catches them.
For hang detection the supervisor asks (TLOG_STACK_SIGNAL) for a signal that
dumps every thread's stack and lets the process run on.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import traceback
from collections.abc import Callable
from types import TracebackType

from tlog import protocol
from tlog.hook.emitter import Emitter

MAX_FRAMES = 200
_current: Callable[[], Emitter | None] | None = None  # the registry's, given to install()


def crash_payload(exc: BaseException, phase: str | None) -> dict:
    """Type, message, full text, frames and the chain of causes of an exception."""
    frames = [{"file": f.filename, "line": f.lineno, "func": f.name, "code": f.line}
              for f in traceback.extract_tb(exc.__traceback__)[-MAX_FRAMES:]]
    payload = {
        "type": _qualname(exc),
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "frames": frames,
        "chain": _chain(exc),
    }
    if phase:
        payload["phase"] = phase
    return payload


def _qualname(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"


def _chain(exc: BaseException) -> list[dict]:
    """Causes oldest first, as the traceback prints them."""
    chain: list[dict] = []
    seen = {id(exc)}
    cur = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    while cur is not None and id(cur) not in seen and len(chain) < 20:
        seen.add(id(cur))
        chain.append({"type": _qualname(cur), "message": str(cur)})
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
    chain.reverse()
    return chain


def install(current: Callable[[], Emitter | None]) -> None:
    """Chain our excepthook in front of whatever is there, and arm faulthandler; ``current`` is the registry's
    (the process's emitter when the exception comes, if it has one)."""
    global _current
    _current = current
    previous = sys.excepthook

    def excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        report(exc)
        previous(kind, exc, tb)

    sys.excepthook = excepthook
    if not faulthandler.is_enabled():
        faulthandler.enable(all_threads=True)  # SIGSEGV/SIGABRT/SIGBUS/SIGFPE/SIGILL: Python stacks on stderr
    register_stack_dump(os.environ.get(protocol.ENV_STACK_SIGNAL))


def register_stack_dump(name: str | None) -> bool:
    """Dump every thread's stack to stderr on signal ``name`` (e.g. SIGUSR1), without stopping the process.

    The supervisor asks for it (through the environment) only when it watches for hangs: on a hang it sends
    that signal and reads the dump from stderr to tell where the main thread is stuck.
    """
    signum = signal_number(name)
    if not isinstance(signum, int) or not hasattr(faulthandler, "register"):
        return False
    faulthandler.register(signum, all_threads=True, chain=False)
    return True


def signal_number(name: str | None) -> int | None:
    """``SIGUSR1`` or ``SIGRTMIN+N`` (the supervisor's default: a signal no scheduler or script sends) as a
    number; None for anything else."""
    if not name or not name.startswith("SIG"):
        return None
    base, plus, offset = name.partition("+")
    number = getattr(signal, base, None)
    if not isinstance(number, int) or (plus and not offset.isdigit()):
        return None
    return number + int(offset) if plus else number


def report(exc: BaseException) -> None:
    """Send a crash event for ``exc`` through the process's emitter, if it has one."""
    em = None if _current is None else _current()
    if em is None or not em.enabled:
        return
    try:
        em.crashed = True
        if em.locate is not None:
            em.locate()
        em.emit("crash", crash_payload(exc, em.phase), step=em.step, epoch=em.epoch, batch=em.batch)
    except Exception:  # noqa: BLE001 - a failing report must not mask the user's traceback
        pass
