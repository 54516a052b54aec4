"""The supervisor's side of the live page (``tlog.hook.live``): make it, name it to the child, read it.

One page per attempt, so a restarted attempt never shows the steps of the one before.  On Linux it is a
memfd named to the child as ``/proc/<tlog's pid>/fd/<n>``: it lives exactly as long as tlog, so nothing is
left behind whatever kills either side.  Elsewhere it is a private temporary file, removed at ``close``.
Reading it is a memory read: the session does so when the child dies, the hang detector while it waits.
"""

from __future__ import annotations

import mmap
import os
import tempfile

from tlog import protocol
from tlog.hook import live


class LivePage:
    """One attempt's page; ``env`` tells the child where it is."""

    def __init__(self) -> None:
        self._path: str | None = None  # a temporary file to remove (no memfd)
        if hasattr(os, "memfd_create") and os.path.isdir(f"/proc/{os.getpid()}/fd"):
            fd = os.memfd_create("tlog-live")  # close-on-exec: the child opens it by path
            where = f"/proc/{os.getpid()}/fd/{fd}"
        else:
            fd, where = tempfile.mkstemp(prefix="tlog-live-")
            self._path = where
        os.ftruncate(fd, live.SIZE)
        self._fd = fd
        self._map = mmap.mmap(fd, live.SIZE)
        self.words = memoryview(self._map).cast("q")
        self.env = {protocol.ENV_LIVE: where}

    @classmethod
    def open(cls) -> LivePage | None:
        """A page, or None where none can be made (then deaths are placed by the last event, as before)."""
        try:
            return cls()
        except (OSError, ValueError):
            return None

    def slot(self, slot: int = 0) -> dict[str, int | None] | None:
        """What the process of ``slot`` stored last (None: no process took it)."""
        return live.read_slot(self.words, slot)

    def of_rank(self, rank: int | None) -> dict[str, int | None] | None:
        """The slot of a distributed run's ``rank`` (or of the run's own process for None)."""
        if rank is None:
            return self.slot(0)
        for slot in range(live.SLOTS):
            found = self.slot(slot)
            if found is not None and found["rank"] == rank:
                return found
        return None

    def step(self) -> int | None:
        """The furthest step any process of the run has completed (progress, for the hang detector)."""
        words, best = self.words, None
        for slot in range(live.SLOTS):
            base = slot * live.WORDS
            if words[base + live.PID] > 0 and (step := words[base + live.STEP]) >= 0:
                best = step if best is None or step > best else best
        return best

    def exiting(self) -> bool:
        """Whether a process of the run has begun to exit (its atexit handlers ran)."""
        words = self.words
        return any(words[slot * live.WORDS + live.PID] > 0 and words[slot * live.WORDS + live.EXITING] == 1
                   for slot in range(live.SLOTS))

    def close(self) -> None:
        try:
            self.words.release()
            self._map.close()
        except BufferError:  # a reader still holds a view: the mapping goes with it
            pass
        os.close(self._fd)
        if self._path is not None:
            try:
                os.unlink(self._path)
            except OSError:
                pass


def merge(position: dict, now: dict[str, int | None] | None) -> dict:
    """The position of the last event (``ExperimentWriter.position``), brought up to the live page where the
    page is further on: a death between reports happened at the page's step, epoch and batch, and a phase
    announced at an earlier step (a validation pass) is over once steps ran after it."""
    step = now.get("step") if now is not None else None
    if now is None or step is None or (position.get("step") is not None and position["step"] > step):
        return position
    if position.get("step") == step:  # same step: fill in what the events lacked
        return {**position, **{k: v for k in ("epoch", "batch") if position.get(k) is None
                               and (v := now.get(k)) is not None}}
    out = {**position, **{k: now.get(k) for k in ("step", "epoch", "batch")}}
    if out.get("phase") is not None and (position.get("phase_step") is None or position["phase_step"] < step):
        out["phase"] = None
    return out
