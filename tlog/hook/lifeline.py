"""Every hooked process of the run dies with its supervisor, even when nothing else can end it.

tlog's guardian kills the run's sessions if tlog dies; this is the second line, for when the guardian is
gone too (``pkill -9 -f tlog`` takes both): each Python process the hook starts in, setsid daemons and
DataLoader workers included, holds a pidfd of the supervisor (``TLOG_SUPERVISOR_PID``) and a daemon thread
blocked on it, which costs nothing until the supervisor exits; then the process SIGKILLs itself.  A forked
child (it inherits the pidfd, not the thread) gets its own thread.
"""

from __future__ import annotations

import _thread  # not threading: its import alone would cost every child's start-up a few ms
import os
import select
import signal

from tlog import protocol


def install() -> None:
    pid = os.environ.get(protocol.ENV_SUPERVISOR_PID, "")
    if not pid.isdigit() or not hasattr(os, "pidfd_open"):
        return
    try:
        fd = os.pidfd_open(int(pid))
    except OSError:  # gone already, or not ours to watch
        return
    _arm(fd)
    os.register_at_fork(after_in_child=lambda: _arm(fd))


def _arm(fd: int) -> None:
    _thread.start_new_thread(_wait, (fd,))


def _wait(fd: int) -> None:
    try:
        select.select([fd], [], [])
    except (OSError, ValueError):
        return
    os.kill(os.getpid(), signal.SIGKILL)
