"""Distributed runs: torchrun (``torch.distributed.run``, the elastic agent) as the child, and what it reports.

Why torchrun and not process groups of tlog's own: the elastic agent already does the rendezvous, the
per-worker environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT) and its own worker restarts, and
people already trust it.  tlog supervises it like any child: the hook travels to every worker through the
inherited environment, the agent stays silent (``tlog.hook.startup``), and each worker reports with its rank.

``tlog run --nproc-per-node N train.py`` becomes ``python -m torch.distributed.run --nproc-per-node N ...
train.py``.  A single node with no rendezvous given runs ``--standalone`` (a free local port, so two jobs on
one machine never collide on torchrun's default 29500).  ``tlog run -- torchrun ...`` is recognised too.

The agent's own account of how its workers ended (a ``failed (exitcode: N) local_rank: L`` log line per
failed round, and the ``ChildFailedError`` table when it gives up) is read from its stderr by
:class:`ReportReader`; exit codes are torchrun's: ``-N`` means killed by signal N.

Why not torchrun's error files (``TORCHELASTIC_ERROR_FILE``, written by ``@record``): they stamp whole
seconds, and torchrun's root cause is the smallest stamp, so two ranks failing within one second tie and
the lower rank is named, typically the one that only lost its peer.  The hook's crash events are stamped to
the microsecond and carry the full traceback; tlog neither writes those files nor needs them, and a
script's own ``@record`` keeps working.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

from tlog.hook.startup import is_launcher

__all__ = ["DistOptions", "ReportReader", "WorkerExit", "dist_options", "is_launcher", "rank_lines"]

MODULE = "torch.distributed.run"
NPROC_WORDS = ("auto", "cpu", "gpu", "xpu")


@dataclass(frozen=True)
class DistOptions:
    """``tlog run``'s torchrun options; ``None`` fields are left to torchrun's defaults."""

    nproc_per_node: str
    nnodes: str = "1"
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    rdzv_backend: str | None = None
    rdzv_id: str | None = None
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def max_nodes(self) -> int:
        return int(self.nnodes.rpartition(":")[2])

    @property
    def node(self) -> int | None:
        """This node's number for its files (``events.node2.jsonl``); None for a single-node job."""
        return self.node_rank if self.max_nodes > 1 else None

    def validate(self) -> None:
        """One-line ValueError for what torchrun would refuse with a traceback, or silently misuse."""
        nproc = self.nproc_per_node
        if not (nproc.isdigit() and int(nproc) > 0) and nproc not in NPROC_WORDS:
            raise ValueError(f"--nproc-per-node must be a positive number or one of {', '.join(NPROC_WORDS)}, "
                             f"not {nproc!r}")
        parts = self.nnodes.split(":")
        if len(parts) > 2 or not all(p.isdigit() for p in parts) or not 0 < int(parts[0]) <= int(parts[-1]):
            raise ValueError(f"--nnodes must be N or MIN:MAX with 0 < MIN <= MAX, not {self.nnodes!r}")
        if not 0 <= self.node_rank < self.max_nodes:
            raise ValueError(f"--node-rank {self.node_rank} is outside 0..{self.max_nodes - 1} "
                             f"(--nnodes {self.nnodes})")
        if self.max_nodes > 1 and not (self.rdzv_endpoint or self.master_addr):
            raise ValueError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (or --master-addr/--master-port), "
                             "the same on every node")
        if self.master_port is not None and not 0 < self.master_port < 65536:
            raise ValueError(f"--master-port must be a TCP port, not {self.master_port}")

    def argv(self, script: str, args: list[str], run_id: str) -> tuple[str, ...]:
        """The torchrun command line; ``run_id`` (the experiment) is the rendezvous id unless one was given."""
        opts = ["--nproc-per-node", self.nproc_per_node]
        given = self.rdzv_endpoint or self.rdzv_backend or self.master_addr or self.master_port
        if self.max_nodes == 1 and not given:
            opts.append("--standalone")
        else:
            opts += ["--nnodes", self.nnodes]
            for flag, value in (("--rdzv-backend", self.rdzv_backend), ("--rdzv-endpoint", self.rdzv_endpoint),
                                ("--master-addr", self.master_addr), ("--master-port", self.master_port)):
                if value is not None:
                    opts += [flag, str(value)]
            if self.max_nodes > 1:
                opts += ["--rdzv-id", self.rdzv_id or run_id]
            if self.rdzv_backend in (None, "static"):  # other backends assign node ranks themselves (and warn)
                opts += ["--node-rank", str(self.node_rank)]
        return (sys.executable, "-m", MODULE, *opts, script, *args)


def dist_options(nproc_per_node: str | None, nnodes: str | None, node_rank: int | None, rdzv_endpoint: str | None,
                 rdzv_backend: str | None, rdzv_id: str | None, master_addr: str | None, master_port: int | None,
                 *, is_command: bool, name: str | None) -> DistOptions | None:
    """``tlog run``'s torchrun options, checked (ValueError, one line); None when it runs no torchrun."""
    given = {"--nnodes": nnodes, "--node-rank": node_rank, "--rdzv-endpoint": rdzv_endpoint,
             "--rdzv-backend": rdzv_backend, "--rdzv-id": rdzv_id, "--master-addr": master_addr,
             "--master-port": master_port}
    if nproc_per_node is None:
        extra = [flag for flag, value in given.items() if value is not None]
        if extra:
            raise ValueError(f"{', '.join(extra)} need{'s' * (len(extra) == 1)} --nproc-per-node (or run "
                             f"torchrun yourself: tlog run -- torchrun ...)")
        return None
    if is_command:
        raise ValueError("--nproc-per-node runs a Python script under torchrun; for a command, give torchrun its "
                         "options yourself: tlog run -- torchrun --nproc-per-node N ...")
    opts = DistOptions(nproc_per_node, nnodes or "1", node_rank or 0, rdzv_endpoint, rdzv_backend, rdzv_id,
                       master_addr, master_port)
    opts.validate()
    if opts.max_nodes > 1 and not name:
        raise ValueError("--nnodes > 1 needs --name, the same on every node: the nodes write one experiment")
    return opts


# -- torchrun's report of its workers' exits ---------------------------------------------------------

_LOG_EXIT = re.compile(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+) \(pid: (\d+)\)")
_HOST = re.compile(r"^\s*host\s*:\s*(\S+)")
_RANK = re.compile(r"^\s*rank\s*:\s*(\d+) \(local_rank: (\d+)\)")
_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+) \(pid: (\d+)\)")
_AGENT_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")
_RANK_PREFIX = re.compile(r"^\[rank(\d+)\]:( ?)")


@dataclass(frozen=True)
class WorkerExit:
    """One worker's exit as torchrun saw it; ``rank`` is None when only its local rank was logged."""

    local_rank: int
    exit_code: int
    pid: int
    rank: int | None = None
    host: str | None = None
    root_cause: bool = False

    @property
    def signal(self) -> int | None:
        return -self.exit_code if self.exit_code < 0 else None


@dataclass
class ReportReader:
    """Streams the agent's stderr lines and keeps every worker exit it reports, newest report winning."""

    exits: list[WorkerExit] = field(default_factory=list)
    _root: bool = False
    _host: str | None = None
    _rank: tuple[int, int] | None = None

    def feed(self, lines: list[str]) -> None:
        for line in lines:
            if "exitcode" in line:
                self._exit_line(line)
            elif line.startswith("Root Cause"):
                self._root = True
            elif line.startswith("Failures:"):
                self._root = False
            elif (m := _HOST.match(line)) is not None:
                self._host = m.group(1)
            elif (m := _RANK.match(line)) is not None:
                self._rank = (int(m.group(1)), int(m.group(2)))

    def _exit_line(self, line: str) -> None:
        if (m := _LOG_EXIT.search(line)) is not None:
            self.exits.append(WorkerExit(int(m.group(2)), int(m.group(1)), int(m.group(3))))
        elif (m := _EXIT.match(line)) is not None and self._rank is not None:
            rank, local = self._rank
            self.exits.append(WorkerExit(local, int(m.group(1)), int(m.group(2)), rank, self._host, self._root))
            self._rank = None

    def root_rank(self) -> int | None:
        """The rank torchrun named as the root cause (its first observed failure), if it said so."""
        return next((e.rank for e in reversed(self.exits) if e.root_cause), None)

    def exit_of(self, rank: int, local_rank: int | None, pid: int | None) -> WorkerExit | None:
        """The newest exit reported for this worker: by global rank from the table, else by pid from the log."""
        for e in reversed(self.exits):
            if e.rank == rank or (e.rank is None and (e.pid == pid or (pid is None and e.local_rank == local_rank))):
                return e
        return None


def rank_lines(lines: list[str], rank: int, own_only: bool = False) -> list[str]:
    """The stderr lines that speak for one rank: its own ``[rankN]:`` lines (unprefixed) and unmarked output,
    without other ranks' lines, torchrun's log lines and its final ChildFailedError traceback, so that a
    peer's "connection closed" cannot decide the category of the rank that failed first.

    ``own_only`` drops the unmarked output too: for a rank that raised (torch prefixes its traceback once the
    process group exists), an unmarked line may be anyone's, e.g. a peer's ``Fatal Python error: Aborted``
    while it shut down, which a native-crash rule would take for the cause."""
    end = len(lines)
    report = next((i for i in range(len(lines) - 1, -1, -1) if "ChildFailedError" in lines[i]), None)
    if report is not None:
        end = next((i for i in range(report, -1, -1) if lines[i].startswith("Traceback")), report)
    out = []
    for line in lines[:end]:
        m = _RANK_PREFIX.match(line)
        if m is None:
            if not own_only and not _AGENT_LOG.match(line):
                out.append(line)
        elif int(m.group(1)) == rank:
            out.append(line[m.end():])
    return out
