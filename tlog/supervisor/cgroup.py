"""A cgroup v2 of the attempt's own, where tlog may make one: every descendant found and killed, whatever it did.

Sessions and parent links (``proctree``) find a descendant that called ``setsid``, but only by scanning; a
cgroup holds every process forked inside it, for ever, and ``cgroup.kill`` (Linux 5.14) ends them all at
once.  So where the unified hierarchy is mounted and tlog's own cgroup is writable (a delegated subtree: a
container's own cgroup, ``systemd-run --user --scope -p Delegate=yes``, root on a host without systemd
managing that cgroup), each attempt gets ``<tlog's cgroup>/tlog-<pid>-<attempt>``, its child enters it
between fork and exec (so nothing it starts is ever outside), and at the end the cgroup is killed, waited
empty and removed.  Where the memory controller is enabled for it, ``limits.memory_scope`` of the child finds
the cgroup first: the run's own ``memory.current`` and limit (the OOM-kill counter read before and after an
attempt is tlog's own cgroup's, which in v2 counts its children's).

Anywhere else (cgroup v1 only, a read-only ``/sys/fs/cgroup``, a systemd unit that did not delegate) nothing
is made and ``proctree`` alone ends the run, as it does in every case anyway.  The cgroup is an addition,
never a requirement.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

PREFIX = "tlog-"
EMPTY_WAIT_S = 1.0  # after the kill: the kernel empties the cgroup within milliseconds
_SYSTEMD_UNIT = (".scope", ".service", ".slice")


class RunCgroup:
    """One attempt's cgroup directory (in ``/sys/fs/cgroup``, or a tree standing in for it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, attempt: int, base: Path | None = None) -> RunCgroup | None:
        """Make the attempt's cgroup under ``base`` (default: tlog's own v2 cgroup); None where that cannot be."""
        if base is None:
            from tlog.supervisor import limits  # here: the guardian (``python -S``, no psutil) imports this module

            base = limits.unified_dir()
        if base is None or not _ours_to_divide(base):
            return None
        _remove_stale(base)
        path = base / f"{PREFIX}{os.getpid()}-{attempt}"
        try:
            path.mkdir()
        except OSError:
            return None
        if not (path / "cgroup.procs").is_file():  # not a cgroup filesystem after all
            with contextlib.suppress(OSError):
                path.rmdir()
            return None
        return cls(path)

    @contextlib.contextmanager
    def entering(self) -> Iterator[Callable[[], None]]:
        """A ``preexec_fn`` part for the spawn inside the block: the forked child moves itself in before exec
        (one write to a file opened here; if it fails, the child runs where tlog runs and ``proctree`` alone
        tracks it)."""
        try:
            fd = os.open(self.path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            yield lambda: None
            return

        def preexec() -> None:
            with contextlib.suppress(OSError):
                os.write(fd, b"0")  # "0": the writing process itself

        try:
            yield preexec
        finally:
            os.close(fd)

    def pids(self) -> list[int]:
        """Every process in the cgroup now (setsid, double-forked and reparented ones included)."""
        try:
            text = (self.path / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(word) for word in text.split() if word.isdigit()]

    def kill(self) -> None:
        """SIGKILL everything in the cgroup: ``cgroup.kill`` where the kernel has it, else each pid listed."""
        try:
            (self.path / "cgroup.kill").write_text("1")
            return
        except OSError:
            pass
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def populated(self) -> bool:
        try:
            text = (self.path / "cgroup.events").read_text()
        except OSError:
            return bool(self.pids())
        return "populated 1" in text

    def remove(self) -> None:
        """Kill what is left, wait until the kernel has emptied it (bounded), and remove the directory, with the
        cgroups inside it (a nested ``tlog run``'s, left by a kill), deepest first."""
        if self.populated():
            self.kill()
            deadline = time.monotonic() + EMPTY_WAIT_S
            while self.populated() and time.monotonic() < deadline:
                time.sleep(0.01)
        inner = [d for d in self.path.rglob("*") if d.is_dir() and not d.is_symlink()]
        for d in [*sorted(inner, key=lambda d: len(d.parts), reverse=True), self.path]:
            with contextlib.suppress(OSError):
                d.rmdir()


def _ours_to_divide(base: Path) -> bool:
    """tlog may add a child cgroup here: writable, and not a systemd unit that kept its subtree for itself."""
    if not os.access(base / "cgroup.procs", os.W_OK) or not os.access(base, os.W_OK):
        return False
    if not base.name.endswith(_SYSTEMD_UNIT):
        return True
    for attr in ("trusted.delegate", "user.delegate"):  # systemd marks a subtree it delegated
        with contextlib.suppress(OSError, AttributeError):
            if os.getxattr(base, attr) == b"1":
                return True
    return False


def _remove_stale(base: Path) -> None:
    """Cgroups of tlogs that died with their guardian (nothing was left to end them): what is still inside
    is a run whose supervisor is gone, killed now, and the cgroup removed.  (This process's own: an
    attempt's that could not be emptied, or of a dead tlog whose pid it now has.)"""
    for path in base.glob(f"{PREFIX}*-*"):
        pid = path.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            RunCgroup(path).remove()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
