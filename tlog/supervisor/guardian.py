"""The guardian: a tiny process that ends the run if tlog itself dies, however it dies (SIGKILL included).

``PR_SET_PDEATHSIG`` kills the child with tlog, but nothing kills the child's
own children: they would be reparented and train on, unrecorded.  So tlog
starts, in a session of its own, this stdlib-only process, tells it each of the
run's sessions on a pipe (``sid start`` lines, from ``proctree.RunTree``) and
each attempt's cgroup (``cgroup PATH``), and says ``end`` when it leaves
normally.  When the pipe closes without ``end``, tlog is gone: the guardian
kills every process of those cgroups and sessions (``proctree.kill``), removes
the cgroups and exits.  It reads a pipe and does nothing else, so it
costs nothing while the run lives.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

from tlog import protocol
from tlog.supervisor import proctree
from tlog.supervisor.cgroup import RunCgroup

END = b"end"
CGROUP = b"cgroup "


def main() -> None:
    """The guardian process: read sessions until EOF; without ``end`` before it, kill them."""
    sessions = proctree.Sessions()
    groups: list[RunCgroup] = []
    ended = False
    for line in sys.stdin.buffer:
        if line.strip() == END:
            ended = True
            break
        if line.startswith(CGROUP):
            groups.append(RunCgroup(Path(os.fsdecode(line[len(CGROUP):].rstrip(b"\n")))))
            continue
        with contextlib.suppress(ValueError):
            sid, start = map(int, line.split())
            sessions.add(sid, start)
    if not ended:
        for group in groups:
            group.kill()
        proctree.kill(sessions)
        for group in groups:
            group.remove()


class Guardian:
    """tlog's side: starts the guardian and feeds it the run's sessions; never raises (it is a safeguard)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        code = f"import sys; sys.path.insert(0, {str(_pkg_dir())!r}); from tlog.supervisor import guardian; " \
               "guardian.main()"
        try:
            self.proc: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-S", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True, env=_plain_env())
        except OSError:
            self.proc = None

    def session(self, sid: int, start: int) -> None:
        self._send(f"{sid} {start}\n".encode())

    def cgroup(self, path: str) -> None:
        self._send(CGROUP + os.fsencode(path) + b"\n")

    def close(self) -> None:
        """tlog is leaving normally, the run already ended: the guardian exits without killing anything."""
        self._send(END + b"\n")
        if self.proc is not None:
            with contextlib.suppress(OSError):
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5.0)

    def _send(self, data: bytes) -> None:
        with self._lock:
            if self.proc is None or self.proc.stdin is None:
                return
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            except OSError:  # it died: PDEATHSIG still covers the child
                self.proc = None


def _pkg_dir() -> str:
    import tlog

    return os.path.dirname(os.path.dirname(os.path.abspath(tlog.__file__)))


def _plain_env() -> dict[str, str]:
    """Not a training process: none of the hook's variables, so it is never hooked nor reported."""
    return {k: v for k, v in os.environ.items() if not k.startswith(protocol.ENV_PREFIX) and k != "PYTHONPATH"}
