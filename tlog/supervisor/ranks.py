"""The workers of a distributed run: who they are, how each ended, and which one failed first.

When one rank of a job fails, every other rank fails soon after: a collective loses its peer ("Connection
closed by peer"), or torchrun stops the survivors with SIGTERM.  Recording each of those as an error would
bury the one that matters, so an attempt gets one error record, for the root cause, with the other ranks'
exits listed as its consequences.

The root cause is the first failure in time, as the elastic agent decides, with one correction: a rank
whose exception only says it lost a peer is a consequence whenever another rank failed on its own.  Times
come from the ranks' crash events (the hook stamps them to the microsecond; torchrun's error files have
whole seconds); a rank that died without an exception (a signal, a native crash) is known from torchrun's
own report (``torchrun.ReportReader``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tlog.diagnosis import rules as R
from tlog.diagnosis.classify import classify_hang
from tlog.supervisor.nvml import DeviceReading
from tlog.supervisor.torchrun import ReportReader, WorkerExit, rank_lines

_COLLECTIVE = next(r for r in R.RULES if r.name == "collective_failure")
PEER_LOST = re.compile(_COLLECTIVE.message + r"|\bDist(?:Backend|Network|Store)Error\b")
# A DDP rank blocked in backward waits in the gradient all-reduce: the wait is in C++, so the Python stack
# shows only the autograd engine.
_DDP_WAIT = re.compile(r"torch/autograd/|_engine_run_backward|torch/_tensor\.py.*backward")
MAX_TEXT = 300
MB = 1024 * 1024


@dataclass
class Worker:
    """One rank of the current round, from its ``meta`` event (and its ``crash`` event, if it raised)."""

    rank: int
    local_rank: int | None = None
    pid: int | None = None
    host: str | None = None
    crash: dict | None = None


@dataclass
class Workers:
    """The ranks this node's supervisor has heard from in the current torchrun round."""

    by_rank: dict[int, Worker] = field(default_factory=dict)
    restart_count: int = 0
    world_size: int | None = None
    report: ReportReader = field(default_factory=ReportReader)

    @property
    def distributed(self) -> bool:
        return bool(self.by_rank) and (self.world_size or 0) > 1

    def joined(self, event: dict) -> bool:
        """A worker's ``meta`` event; True when it starts a new torchrun round (its restart count is higher):
        the caller then closes the previous round and feeds it to :meth:`next_round`'s workers."""
        rank, data = event.get("rank"), event["data"]
        if rank is None or "pid" not in data:
            return False
        count = data.get("restart_count") or 0
        if count > self.restart_count:
            return True
        if count == self.restart_count:
            self.world_size = event.get("world_size", self.world_size)
            worker = self.by_rank.setdefault(rank, Worker(rank))
            worker.local_rank, worker.pid, worker.host = event.get("local_rank"), data["pid"], data.get("host")
        return False

    def crashed(self, event: dict) -> None:
        rank = event.get("rank")
        if rank is not None:
            worker = self.by_rank.setdefault(rank, Worker(rank))
            if worker.crash is None:  # the first exception a rank reports is its failure
                worker.crash = event

    def next_round(self, restart_count: int) -> Workers:
        """The workers of torchrun's next round: none heard from yet, the same world."""
        return Workers(restart_count=restart_count, world_size=self.world_size)

    def pids(self) -> dict[int, int]:
        """pid -> rank, for the resource monitor's per-rank columns."""
        return {w.pid: w.rank for w in self.by_rank.values() if w.pid is not None}

    def exit_of(self, worker: Worker) -> WorkerExit | None:
        return self.report.exit_of(worker.rank, worker.local_rank, worker.pid)


@dataclass(frozen=True)
class Verdict:
    """The root cause of a distributed failure and what happened to the other ranks because of it."""

    rank: int
    crash: dict | None
    exit: WorkerExit | None
    consequences: list[dict[str, Any]]
    peer_lost: bool  # only lost-peer errors here: the root cause is probably on another node

    def fields(self) -> dict[str, Any]:
        """What the error record of training_errors.json gains."""
        out: dict[str, Any] = {"rank": self.rank, "root_cause_rank": self.rank, "consequences": self.consequences}
        if self.crash is not None and self.crash.get("local_rank") is not None:
            out["local_rank"] = self.crash["local_rank"]
        if self.peer_lost:
            out["peer_lost"] = True
        return out


@dataclass(frozen=True)
class Blame:
    """Whose failure an error record describes, and what the record gains for a distributed run."""

    crash: dict | None
    exit_code: int | None
    signal: int | None
    stderr: list[str]
    hang_stack: str | None
    fields: dict[str, Any]


def blame(workers: Workers, crash: dict | None, stderr: list[str], exit_code: int | None, signal: int | None,
          hang_stack: str | None, stacks: dict[int, str]) -> Blame:
    """The run's own failure, or in a distributed run its root-cause rank's: that rank's crash, exit and
    stderr lines (a hang: its stack, with every rank's dump kept as the record's traceback)."""
    if len(stacks) > 1:
        root, others = hang_root(stacks)
        return Blame(crash, exit_code, signal, stderr, stacks[root],
                     {"rank": root, "root_cause_rank": root, "consequences": others, "traceback": hang_stack})
    verdict = root_cause(workers) if workers.distributed and hang_stack is None else None
    if verdict is None:
        return Blame(crash, exit_code, signal, stderr, hang_stack, {})
    exit = verdict.exit
    if verdict.crash is None and exit is not None:  # no exception: torchrun saw how that worker ended
        exit_code, signal = (None, exit.signal) if exit.signal else (exit.exit_code, None)
    own = rank_lines(stderr, verdict.rank, own_only=verdict.crash is not None)  # the same on a loaded machine
    return Blame(verdict.crash, exit_code, signal, own, None, verdict.fields())


def is_peer_loss(crash: dict) -> bool:
    """An exception that only says another rank went away (or a collective timed out waiting for one)."""
    data = crash.get("data", {})
    return bool(PEER_LOST.search(f"{data.get('type', '')}: {data.get('message', '')}"))


def root_cause(workers: Workers) -> Verdict | None:
    """The rank that failed first on its own, or None when no worker reported (the agent itself failed)."""
    ranks = list(workers.by_rank.values())
    crashed = sorted((w for w in ranks if w.crash is not None), key=lambda w: (w.crash or {}).get("t", 0.0))
    primary = [w for w in crashed if w.crash is not None and not is_peer_loss(w.crash)]
    signalled = [w for w in ranks if w.crash is None and _died_alone(workers.exit_of(w))]
    reported = workers.report.root_rank()
    if primary:
        root = primary[0]
    elif signalled:
        root = next((w for w in signalled if w.rank == reported), signalled[0])
    elif crashed:
        root = next((w for w in crashed if w.rank == reported), crashed[0])
    else:
        found = workers.by_rank.get(reported) if reported is not None else None
        if found is None:
            return None
        root = found
    others = [_consequence(w, workers.exit_of(w), root) for w in sorted(ranks, key=lambda w: w.rank) if w is not root]
    return Verdict(root.rank, root.crash, workers.exit_of(root), others,
                   peer_lost=not primary and not signalled and root.crash is not None)


def _died_alone(exit: WorkerExit | None) -> bool:
    """Killed by a signal torchrun did not send (it stops the survivors with SIGTERM)."""
    return exit is not None and exit.signal is not None and exit.signal != 15


def _consequence(worker: Worker, exit: WorkerExit | None, root: Worker) -> dict[str, Any]:
    out: dict[str, Any] = {"rank": worker.rank}
    if worker.crash is not None:
        data = worker.crash["data"]
        out["exception"] = _short(f"{data.get('type')}: {data.get('message')}")
        if root.crash is not None and "t" in worker.crash and "t" in root.crash:
            out["after_s"] = round(worker.crash["t"] - root.crash["t"], 3)
    if exit is not None:
        out["exit_code"] = exit.exit_code
    if worker.crash is None and exit is None:
        out["exit"] = f"stopped after rank {root.rank} failed"
    elif worker.crash is None and exit is not None and exit.signal == 15:
        out["exit"] = "terminated by torchrun (SIGTERM)"
    return out


def _short(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= MAX_TEXT else line[: MAX_TEXT - 1] + "…"


# -- resources -----------------------------------------------------------------------------------------


def rank_memory(tree: list[tuple[int, int]], parents: dict[int, int], workers: dict[int, int],
                devices: list[DeviceReading]) -> dict[str, float]:
    """``rank<r>_rss_mb`` and ``rank<r>_gpu_mb`` of one resource reading: each rank's worker (``workers``:
    pid -> rank) with its descendants (DataLoader workers), from the tree's (pid, RSS bytes) and ``parents``
    (pid -> parent pid); GPU memory only where NVML lists the processes with their sizes."""
    owner = {}
    for pid, _ in tree:
        up = pid
        for _hop in range(8):
            if up in workers or up not in parents:
                break
            up = parents[up]
        if up in workers:
            owner[pid] = workers[up]
    out: dict[str, float] = {}
    for pid, rss in tree:
        if pid in owner:
            key = f"rank{owner[pid]}_rss_mb"
            out[key] = out.get(key, 0.0) + rss / MB
    for dev in devices:
        for proc in dev.processes or ():
            if proc.pid in owner and proc.used is not None:
                key = f"rank{owner[proc.pid]}_gpu_mb"
                out[key] = out.get(key, 0.0) + proc.used / MB
    return dict(sorted(out.items(), key=lambda kv: (int(kv[0][4:kv[0].index("_")]), kv[0])))


# -- hangs ---------------------------------------------------------------------------------------------


def hang_root(stacks: dict[int, str]) -> tuple[int, list[dict[str, Any]]]:
    """Of the ranks' stack dumps, the rank that is not waiting for its peers (the straggler), and the
    others as consequences; when every rank waits in a collective, the lowest rank stands for them."""
    waiting = {rank: _waits_for_peers(stack) for rank, stack in stacks.items()}
    root = next((rank for rank in sorted(stacks) if not waiting[rank]), min(stacks))
    others = [{"rank": rank, "exit": f"waiting for its peers ({classify_hang(stacks[rank]).cause})"
               if waiting[rank] else f"stuck too ({classify_hang(stacks[rank]).cause})"}
              for rank in sorted(stacks) if rank != root]
    return root, others


def _waits_for_peers(stack: str) -> bool:
    return classify_hang(stack).rule == "hang_collective" or bool(_DDP_WAIT.search(stack))
