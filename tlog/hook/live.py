"""The live page: where the run is now, readable by the supervisor without a message from the child.

The probe reports a window of steps at a time (every ``--log-every`` steps, or every half second), so the
last *event* can be far behind the step a process is really at.  A native crash, a SIGKILL, an OOM kill or
a hang leaves no last word; the page does.  The supervisor makes one small shared memory page per attempt
(a memfd, or a temporary file where there is none) and names it in ``TLOG_LIVE``; each hooked process maps
its own slot and the probe stores into it as a plain memory write: the step at each optimizer step, the
batch at each backward, the epoch when a training pass starts.  No syscall, no message, no device sync:
the store is a ``memoryview`` item assignment.  The supervisor reads the slot when the child dies (and the
hang detector reads it while it runs).

Layout (the one contract of the page, used by both sides): ``SLOTS`` slots of ``WORDS`` native int64 words.
Slot 0 is the run's own process; a torchrun worker takes slot ``1 + LOCAL_RANK``.  Words: the owner's pid
(0: slot unused), the step (completed optimizer steps), the epoch, the batch (0-based, of the training
pass), the rank, and 1 once the process is exiting (its atexit handlers ran: the interpreter's teardown,
silent and sometimes slow, is not a hang); ``UNSET`` for what is not known.  An aligned 8-byte store is
atomic on the machines torch runs on, so a reader sees each word old or new, never torn.
"""

from __future__ import annotations

import mmap
import os

from tlog import protocol

WORDS = 8
SLOTS = 64
SLOT_BYTES = WORDS * 8
SIZE = SLOTS * SLOT_BYTES
PID, STEP, EPOCH, BATCH, RANK, EXITING = range(6)
UNSET = -1
FIELDS = (("step", STEP), ("epoch", EPOCH), ("batch", BATCH))


def slot_of(local_rank: int | None) -> int:
    """The slot a process writes: 0 for the run's own process, ``1 + LOCAL_RANK`` for a torchrun worker."""
    if local_rank is None or not 0 <= local_rank < SLOTS - 1:
        return 0
    return 1 + local_rank


def _fresh() -> memoryview:
    words = memoryview(bytearray(SLOT_BYTES)).cast("q")
    for i in range(1, WORDS):
        words[i] = UNSET
    return words


def attach() -> memoryview:
    """This process's slot as ``WORDS`` int64 words, claimed (pid, rank written); a private stand-in when no
    supervisor made a page (or it cannot be mapped), so the probe stores unconditionally."""
    path = os.environ.get(protocol.ENV_LIVE)
    local = os.environ.get("LOCAL_RANK", "")
    if not path:
        return _fresh()
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            page = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return _fresh()
    slot = slot_of(int(local) if local.isdigit() else None)
    words = memoryview(page)[slot * SLOT_BYTES:(slot + 1) * SLOT_BYTES].cast("q")
    for i in range(1, WORDS):
        words[i] = UNSET
    rank = os.environ.get("RANK", "")
    words[RANK] = int(rank) if rank.isdigit() else UNSET
    words[PID] = os.getpid()
    return words


def read_slot(page: memoryview, slot: int) -> dict[str, int | None] | None:
    """One slot as the supervisor reads it: pid, rank, step, epoch, batch (None where unset); None if unused."""
    words = page[slot * WORDS:(slot + 1) * WORDS]
    if words[PID] <= 0:
        return None
    out: dict[str, int | None] = {name: (v if (v := words[i]) >= 0 else None) for name, i in FIELDS}
    out["pid"] = words[PID]
    out["rank"] = words[RANK] if words[RANK] >= 0 else None
    return out
