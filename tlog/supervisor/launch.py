"""Spawn the child, forward signals to its process group, and read its exit.

The child gets its own session, so a Ctrl-C in the terminal reaches tlog
alone; tlog forwards it to the whole group (DataLoader workers included),
waits ``grace`` seconds, then kills the run's whole tree (``proctree``: setsid
descendants too).  A second Ctrl-C kills at once.  The child is also set to die
with tlog (``PR_SET_PDEATHSIG``), whatever kills tlog, and enters the attempt's cgroup where there is one
(``cgroup``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import tlog
from tlog import protocol
from tlog.supervisor import proctree
from tlog.supervisor.cgroup import RunCgroup

# what signal.signal takes and returns: a function, SIG_DFL/SIG_IGN, or None (set outside Python)
Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None
BOOT_DIR = Path(tlog.__file__).resolve().parent / "hook" / "boot"
PKG_DIR = Path(tlog.__file__).resolve().parent.parent


class LaunchError(Exception):
    """The child cannot be started (missing script or command): one line for the user."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ChildSpec:
    """What to run (a script under tlog's interpreter is argv ``python -u script ...``) and its environment."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


def script_argv(script: str, args: list[str]) -> tuple[str, ...]:
    if not os.path.isfile(script):
        raise LaunchError(f"no such script: {script}", 2)
    return (sys.executable, "-u", script, *args)


def command_argv(command: list[str]) -> tuple[str, ...]:
    if not command:
        raise LaunchError("nothing to run: give a script, or a command after --", 2)
    program = command[0]
    if os.sep in program:
        if not os.access(program, os.X_OK):
            raise LaunchError(f"cannot execute {program}: not found or not executable", 127)
    elif shutil.which(program) is None:
        raise LaunchError(f"command not found: {program}", 127)
    return tuple(command)


# What a supervisor tells its child about the run; never inherited from an outer run (a sweep driver under
# ``tlog run`` starting its trials with ``tlog run``): each run has its own wire.  Only tlog says where to resume.


def leave_outer_run() -> None:
    """In a tlog started inside another run: forget that run's markers (this process is a supervisor, not
    its training script) and encode with orjson, which its import skipped in a supervised child."""
    for key in protocol.RUN_ENV:
        os.environ.pop(key, None)
    protocol.use_orjson()


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment that tells the hook it is supervised and lets it load."""
    env = {key: value for key, value in os.environ.items() if key not in protocol.RUN_ENV}
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(BOOT_DIR)]
    env["PYTHONPATH"] = os.pathsep.join([str(BOOT_DIR), *path])
    env["PYTHONUNBUFFERED"] = "1"
    env[protocol.ENV_SUPERVISED] = "1"
    env[protocol.ENV_PKG_DIR] = str(PKG_DIR)
    env[protocol.ENV_SUPERVISOR_PID] = str(os.getpid())  # the hook's lifeline (tlog.hook.lifeline)
    env.update(extra)
    return env


def spawn(spec: ChildSpec, group: RunCgroup | None = None) -> subprocess.Popen:
    """Start the child in its own session, set to die with tlog, inside ``group`` (the attempt's cgroup)."""
    die = proctree.die_with_parent(os.getpid())
    with group.entering() if group is not None else contextlib.nullcontext(lambda: None) as enter:

        def preexec() -> None:  # three syscalls, no lock nor import: safe with tlog's threads
            die()
            enter()

        try:
            return subprocess.Popen(spec.argv, env=spec.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=None, bufsize=0, start_new_session=True,
                                    preexec_fn=preexec)  # noqa: PLW1509
        except OSError as exc:
            raise LaunchError(f"cannot start {spec.argv[0]}: {exc.strerror or exc}", 127) from None


def exit_status(returncode: int) -> tuple[int, int | None]:
    """(shell-style exit code, signal number or None): 128+N when killed by signal N."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


def signal_name(signum: int | None) -> str:
    if signum is None:
        return ""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class GroupSignaller:
    """Forwards signals to the child's process group with one grace deadline, after which ``kill_tree``
    (every process of the run) is called."""

    def __init__(self, pid: int, grace: float, on_message: Callable[[str], None],
                 kill_tree: Callable[[], object] = lambda: None) -> None:
        self.pid = pid
        self.kill_tree = kill_tree
        self.grace = grace
        self.say = on_message
        self.forwarded: int | None = None
        self._timer: threading.Timer | None = None

    def forward(self, signum: int) -> None:
        """First signal: pass it on and arm the deadline; a second one kills now."""
        if self.forwarded is None:
            self.forwarded = signum
            self.say(f"received {signal_name(signum)}: forwarded to the run; "
                     f"killing it in {self.grace:g} s if it has not exited")
            self._send(signum)
            self._timer = threading.Timer(self.grace, self.kill)
            self._timer.daemon = True
            self._timer.start()
        else:
            self.say(f"received {signal_name(signum)} again: killing the run now")
            self.kill()

    def kill(self) -> None:
        self._send(signal.SIGKILL)
        self.kill_tree()

    def stop(self) -> None:
        """tlog's own decision to end the run (a hang): TERM now, KILL after the grace; not a forwarded signal."""
        self._send(signal.SIGTERM)
        if self._timer is None:
            self._timer = threading.Timer(self.grace, self.kill)
            self._timer.daemon = True
            self._timer.start()

    def _send(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class SignalRoute:
    """Where tlog's signals go: to the running attempt's process group (its ``GroupSignaller``), else kept
    for the attempt about to start, and a restart waiting out its backoff is woken so that it does not
    happen.  Lifetime: the run; the handlers run on the main thread, between its bytecodes."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self._target: GroupSignaller | None = None
        self._wake = threading.Event()

    def on_signal(self, signum: int) -> None:
        target = self._target
        if target is None:
            self.pending = signum
            self._wake.set()
        else:
            target.forward(signum)

    def attach(self, signaller: GroupSignaller) -> None:
        """An attempt started: signals go to its group from now (one that came before it, at once)."""
        self._target = signaller
        if self.pending is not None:
            signaller.forward(self.pending)

    def detach(self) -> None:
        self._target = None

    def wait(self, seconds: float) -> bool:
        """Wait ``seconds`` unless a signal came or comes meanwhile; False when one did."""
        if self.pending is None:
            self._wake.wait(seconds)
        return self.pending is None


def install_handlers(handler: Callable[[int], None], extra: tuple[int, ...] = ()) -> dict[int, Handler]:
    """Route SIGINT/SIGTERM/SIGHUP (and ``extra``) to ``handler``; returns the previous handlers."""
    previous: dict[int, Handler] = {}
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, *extra):
        try:
            previous[signum] = signal.signal(signum, lambda s, _f: handler(s))
        except (ValueError, OSError):
            pass
    return previous


def restore_handlers(previous: dict[int, Handler]) -> None:
    for signum, old in previous.items():
        signal.signal(signum, old)
