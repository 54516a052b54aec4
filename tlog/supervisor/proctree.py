"""Which processes are the run's, and ending all of them (stdlib only: the guardian process uses it too).

A process group is not enough to end a run: a descendant that calls ``setsid``
(``subprocess.Popen(..., start_new_session=True)``) leaves it, and one whose
parent died is reparented away from the tree.  The run is therefore defined by
*sessions*: the child leads its own session, every descendant that did not call
``setsid`` stays in it, and a descendant that did start a session of its own is
recorded (``RunTree``'s scan, while a parent link still ties it to the run), so
its whole session counts from then on.  Each session is remembered with its
leader's start time, and only processes started after that leader are members,
so a reused session id never makes an unrelated process a target.

Kernel help, where Linux offers it: the child gets ``PR_SET_PDEATHSIG`` (it is
killed the moment tlog dies, even by SIGKILL), and tlog is a child subreaper,
so an orphaned descendant is reparented to tlog (still findable by its parent
link, and reaped by tlog) instead of to init.  Where tlog can make a cgroup v2 for
the attempt (``cgroup``), its processes are members too, whatever they did, and
``cgroup.kill`` ends them all at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from tlog.supervisor.cgroup import RunCgroup

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
SCAN_S = 1.0  # how often a live run's tree is scanned for new sessions (~1 ms per 100 processes)
KILL_ROUNDS = 20  # passes of kill-and-rescan, so that a process forking while it is killed is caught too

_libc = None


def _prctl(option: int, value: int) -> bool:
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        return _libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux: no such call, the other safeguards still apply
        return False


def become_subreaper() -> bool:
    """Orphaned descendants of this process are reparented to it, not to init."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child is SIGKILLed when ``parent`` (the thread that forked it) dies; if it
    already has, before the call took effect, the child ends itself at once."""
    _prctl(PR_SET_PDEATHSIG, 0)  # load libc here, not between fork and exec

    def preexec() -> None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(137)

    return preexec


class Proc(NamedTuple):
    pid: int
    ppid: int
    sid: int
    start: int  # clock ticks after boot (field 22 of /proc/PID/stat): with the pid, one process for ever
    zombie: bool


def read(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split(b" ", 20)  # after the command name, which may hold spaces
    return Proc(pid, int(fields[1]), int(fields[3]), int(fields[19]), fields[0] in (b"Z", b"X"))


def scan() -> dict[int, Proc]:
    """Every process visible now."""
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (p := read(int(name))) is not None:
            procs[p.pid] = p
    return procs


class Sessions:
    """The run's sessions: session id -> its leader's start time."""

    def __init__(self) -> None:
        self.known: dict[int, int] = {}

    def add(self, sid: int, start: int) -> bool:
        """Record a session; False when it was known."""
        if sid in self.known:
            return False
        self.known[sid] = start
        return True

    def members(self, procs: dict[int, Proc], roots: Iterable[int] = ()) -> set[int]:
        """Live processes of the run: in one of its sessions (and no older than that session's leader),
        plus every descendant of those and of ``roots``.  Never this process itself."""
        chosen = {pid for pid, p in procs.items() if self._in_session(p, procs)}
        chosen.update(pid for pid in roots if pid in procs)
        children: dict[int, list[int]] = {}
        for p in procs.values():
            children.setdefault(p.ppid, []).append(p.pid)
        stack = list(chosen)
        while stack:
            for kid in children.get(stack.pop(), ()):
                if kid not in chosen:
                    chosen.add(kid)
                    stack.append(kid)
        chosen.discard(os.getpid())
        return {pid for pid in chosen if not procs[pid].zombie}

    def _in_session(self, p: Proc, procs: dict[int, Proc]) -> bool:
        start = self.known.get(p.sid)
        if start is None or p.start < start:
            return False
        leader = procs.get(p.sid)
        return leader is None or leader.start == start  # a live leader of another start: the id was reused


def kill(sessions: Sessions, roots: Callable[[dict[int, Proc]], Iterable[int]] = lambda _p: ()) -> set[int]:
    """SIGKILL every process of the run, rescanning until none is left (or ``KILL_ROUNDS``); returns them."""
    hit: set[int] = set()
    for _ in range(KILL_ROUNDS):
        procs = scan()
        targets = sessions.members(procs, roots(procs))
        if not targets:
            break
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        hit |= targets
    return hit


class RunTree:
    """The processes of the current attempt, in tlog: new sessions recorded every ``SCAN_S`` (and handed
    to ``on_session``, the guardian), orphans that tlog inherited as subreaper reaped, all of it killed at
    the end."""

    def __init__(self, on_session: Callable[[int, int], None] = lambda _sid, _start: None,
                 on_cgroup: Callable[[str], None] = lambda _path: None) -> None:
        self.sessions = Sessions()
        self.on_session = on_session
        self.on_cgroup = on_cgroup
        self.child: Proc | None = None
        self.cgroup: RunCgroup | None = None
        self._attempts = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def contain(self, base: Path | None = None) -> RunCgroup | None:
        """The next attempt's cgroup (v2, where tlog may make one; ``base`` stands in for tlog's own cgroup),
        for its child to enter: every process of the attempt is then in it, whatever it does; told to
        ``on_cgroup`` (the guardian)."""
        self._attempts += 1
        self.cgroup = RunCgroup.create(self._attempts, base)
        if self.cgroup is not None:
            self.on_cgroup(str(self.cgroup.path))
        return self.cgroup

    def adopt(self, pid: int) -> None:
        """The attempt's child (started as a session leader: its session id is its pid, even if it has
        not reached ``setsid`` yet): its session is the run's; scanning starts."""
        child = read(pid)
        if child is None:
            return
        with self._lock:
            self.child = child
            self._record(pid, child.start)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tlog-tree", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The attempt is over: scanning stops; its cgroup's leftovers are killed and the cgroup removed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None

    def scan(self) -> set[int]:
        """One pass: the run's live processes now; new sessions among them recorded; inherited orphans
        that have exited reaped."""
        procs = scan()
        with self._lock:
            members = self.sessions.members(procs, self._roots(procs))
            for pid in members:
                p = procs[pid]
                if p.sid == p.pid:
                    self._record(p.sid, p.start)
            self._reap(procs)
        return members

    def kill(self) -> set[int]:
        """SIGKILL the whole run (setsid descendants and orphans included); returns the pids signalled."""
        with self._lock:
            hit: set[int] = set()
            if self.cgroup is not None:  # all at once; counted from the list before, as they are gone at once
                hit = set(self.cgroup.pids())
                self.cgroup.kill()
            hit |= kill(self.sessions, self._roots)
            self._reap(scan())
            return hit

    def _run(self) -> None:
        while not self._stop.wait(SCAN_S):
            try:
                self.scan()
            except Exception:  # noqa: BLE001 - /proc moving under us; the next scan sees it settled
                continue

    def _record(self, sid: int, start: int) -> None:
        if self.sessions.add(sid, start):
            self.on_session(sid, start)

    def _roots(self, procs: dict[int, Proc]) -> list[int]:
        """The run's processes that its sessions may not hold: orphans reparented here, and (where there is one)
        everything in the attempt's cgroup."""
        return [*self._orphans(procs), *(self.cgroup.pids() if self.cgroup is not None else ())]

    def _orphans(self, procs: dict[int, Proc]) -> list[int]:
        """Processes reparented to tlog (its children started after this attempt's child, other than that
        child): leftovers of the run whose parent died."""
        child, me = self.child, os.getpid()
        if child is None:
            return []
        return [p.pid for p in procs.values() if p.ppid == me and p.start >= child.start and p.pid != child.pid
                and p.sid != os.getsid(0)]

    def _reap(self, procs: dict[int, Proc]) -> None:
        child = self.child
        for p in procs.values():
            if p.zombie and p.ppid == os.getpid() and child is not None and p.start >= child.start \
                    and p.pid != child.pid and p.sid in self.sessions.known:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(p.pid, os.WNOHANG)
