"""What the live panel shows, folded from the event stream one event at a time.

The supervisor calls :meth:`ViewState.apply` from its reader threads for every
event (up to ~100k/s), so each call does O(1) work and keeps every history
bounded; the panel's refresh thread calls :meth:`ViewState.snapshot` and renders
the copy, so rendering never races with the readers.  One uncontended lock
guards both: it costs well under a microsecond and makes a snapshot consistent.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections import deque
from typing import Any

from tlog import statuses
from tlog.direction import config_modes, metric_mode
from tlog.protocol import number

NOT_METRICS = frozenset({"total_batches", "total_epochs", "epoch", "step", "batch"})
CONFIG_EPOCH_KEYS = ("total_epochs", "epochs", "num_epochs", "max_epochs", "n_epochs")
FINAL_STATUSES = frozenset(statuses.ENDED)
SPARK_POINTS = 64
RATE_SAMPLE_S = 0.5
RATE_SAMPLES = 20  # ~10 s of history at one sample per RATE_SAMPLE_S


class MetricStat:
    """Latest/best value of one metric and a whole-run trend in at most SPARK_POINTS points.

    The trend keeps the whole run rather than the last few values: when the
    buffer fills, neighbouring points are averaged pairwise and each later point
    averages twice as many values, so the cost stays O(1) amortised per value.
    """

    __slots__ = ("_acc", "_n", "best", "last", "lower_is_better", "points", "stride")

    def __init__(self, name: str, modes: dict[str, str] | None = None) -> None:
        mode = metric_mode(name, modes)
        self.lower_is_better: bool | None = None if mode is None else mode == "min"
        self.last: float | None = None
        self.best: float | None = None
        self.points: list[float] = []
        self.stride = 1
        self._acc = 0.0
        self._n = 0

    def add(self, value: float) -> None:
        self.last = value
        lower = self.lower_is_better
        if lower is not None:
            best = self.best
            if best is None:
                if not math.isnan(value):  # NaN compares false later, so it must not start the race
                    self.best = value
            elif value < best if lower else value > best:
                self.best = value
        self._acc += value
        self._n += 1
        if self._n >= self.stride:
            self.points.append(self._acc / self._n)
            self._acc = 0.0
            self._n = 0
            if len(self.points) >= SPARK_POINTS:
                self._compact()

    def _compact(self) -> None:
        old = self.points
        self.points = [(old[i] + old[i + 1]) / 2 for i in range(0, len(old) - 1, 2)]
        self.stride *= 2

    def trend(self) -> list[float]:
        """The points plus the partly filled last bucket, so the line ends at the present."""
        return [*self.points, self._acc / self._n] if self._n else list(self.points)

    def copy(self) -> MetricStat:
        clone = copy.copy(self)
        clone.points = list(self.points)
        return clone


class ViewState:
    """The panel's model: plain attributes, read by :func:`tlog.views.panel.render` on a snapshot.

    Only rank 0 (or events without a rank) moves progress and metrics, so that
    the ranks of a distributed run do not make the bars and values flicker;
    errors, warnings and crashes are taken from every rank.
    """

    def __init__(self, name: str = "", command: str = "", output_lines: int = 100,
                 start_time: float | None = None) -> None:
        self.name = name
        self.command = command
        self.host: str | None = None
        self.attempt: int | None = None
        self.max_attempts: int | None = None
        self.pid: int | None = None
        self.start_time = start_time
        self.end_time: float | None = None
        self.last_time: float | None = None
        self.status = "starting"
        self.exit_code: int | None = None
        self.restart: dict | None = None
        self.phase: str | None = None
        self.epoch: int | None = None
        self.zero_based_epochs = False
        self.total_epochs: int | None = None
        self.batch: int | None = None
        self.total_batches: int | None = None
        self.step: int | None = None
        self.rate_samples: deque[tuple[float, int]] = deque(maxlen=RATE_SAMPLES)
        self.position: tuple[float, int] | None = None
        self.metrics: dict[str, MetricStat] = {}
        self.modes: dict[str, str] = {}  # the run's [metric_modes] overrides, from its config event
        self.system: dict[str, Any] = {}
        self.errors: dict[str, int] = {}
        self.last_error: str | None = None
        self.warnings: dict[str, int] = {}
        self.last_warning: str | None = None
        self.crash: str | None = None
        self.checkpoints = 0
        self.last_checkpoint: dict | None = None
        self.ranks: dict[int, dict[str, Any]] = {}  # distributed runs: step, loss, memory, host, failure per rank
        self.failed_rank: int | None = None  # the root cause of the last distributed failure
        self.output: deque[tuple[str, str]] = deque(maxlen=output_lines)
        self.events = 0
        self.hang_limit_s: float | None = None  # the hang detector's current limit (None: off)
        self._lock = threading.Lock()

    # -- feeding -----------------------------------------------------------------------------------

    def apply(self, event: dict) -> None:
        """Fold one event in; unknown kinds only count, so a newer producer never breaks the view."""
        handler = _DISPATCH.get(event.get("kind", "metrics"))
        data = event.get("data")
        with self._lock:
            self.events += 1
            t = event.get("t")
            if t is not None:
                self.last_time = t
                if self.start_time is None:
                    self.start_time = t
            if handler is not None and data.__class__ is dict:
                handler(self, event, data)

    def set_hang_limit(self, seconds: float) -> None:
        """The hang detector's current limit, as it adapts to the run (supervisor/hang.py)."""
        self.hang_limit_s = seconds

    def apply_output(self, stream: str, line: str) -> None:
        """Keep the script's recent output for the output pane (a bounded deque)."""
        self.output.append((stream, line.rstrip("\r\n")))

    def snapshot(self) -> ViewState:
        """A copy that a renderer may read while the readers keep applying events."""
        with self._lock:
            clone = copy.copy(self)
            clone.metrics = {name: stat.copy() for name, stat in self.metrics.items()}
            clone.rate_samples = deque(self.rate_samples)
            clone.errors = dict(self.errors)
            clone.warnings = dict(self.warnings)
            clone.ranks = {rank: dict(info) for rank, info in self.ranks.items()}
        clone.output = deque(list(self.output))  # deque is thread-safe on its own; list() is atomic
        return clone

    # -- derived values ----------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def display_epoch(self) -> int | None:
        """The epoch counted from 1: a run that ever logged epoch 0 counts from 0."""
        if self.epoch is None:
            return None
        return self.epoch + 1 if self.zero_based_epochs else self.epoch

    def rate(self) -> float | None:
        """Steps per second over the last ~10 s of samples."""
        if not self.rate_samples or self.position is None:
            return None
        t0, p0 = self.rate_samples[0]
        t1, p1 = self.position
        if t1 - t0 <= 0 or p1 < p0:
            return None
        return (p1 - p0) / (t1 - t0)

    def elapsed(self, now: float | None = None) -> float | None:
        if self.start_time is None:
            return None
        end = self.end_time if self.end_time is not None else (time.time() if now is None else now)
        return max(0.0, end - self.start_time)

    # -- handlers (called under the lock) ----------------------------------------------------------

    def _main_rank(self, event: dict) -> bool:
        rank = event.get("rank")
        return rank is None or rank == 0

    def _progress(self, event: dict) -> None:
        if self.status == "starting":  # the script speaks before (or without) a supervisor attempt event
            self.status = "running"
        step = event.get("step")
        epoch = event.get("epoch")
        batch = event.get("batch")
        if epoch is not None:
            self.epoch = epoch
            if epoch == 0:
                self.zero_based_epochs = True
        if batch is not None:
            self.batch = batch
        if step is not None:
            self.step = step
        elif batch is not None and self.total_batches and self.epoch is not None:
            step = self.epoch * self.total_batches + batch
        t = event.get("t")
        if step is not None and t is not None:
            self._sample(t, step)

    def _sample(self, t: float, position: int) -> None:
        samples = self.rate_samples
        if self.position is not None and position < self.position[1]:
            samples.clear()  # the run went back (a restart from a checkpoint): the old rate is void
        self.position = (t, position)
        if not samples or t - samples[-1][0] >= RATE_SAMPLE_S:
            samples.append((t, position))

    def _rank(self, rank: int) -> dict[str, Any]:
        info = self.ranks.get(rank)
        if info is None:
            info = self.ranks[rank] = {}
        return info

    def _on_metrics(self, event: dict, data: dict) -> None:
        rank = event.get("rank")
        if rank is not None:
            info = self._rank(rank)
            if event.get("step") is not None:
                info["step"] = event["step"]
            if "loss" in data:
                info["loss"] = number(data["loss"])
            if rank != 0:  # the bars and values are rank 0's, so the ranks do not make them flicker
                return
        if "total_batches" in data or "total_epochs" in data:
            self._totals(data)
        self._progress(event)
        metrics = self.metrics
        for name, raw in data.items():
            if name in NOT_METRICS:
                continue
            value = number(raw)
            if value is None:
                continue
            stat = metrics.get(name)
            if stat is None:
                stat = metrics[name] = MetricStat(name, self.modes)
            stat.add(value)

    def _totals(self, data: dict) -> None:
        total = data.get("total_batches")
        if total.__class__ is int and total > 0:
            self.total_batches = total
        total = data.get("total_epochs")
        if total.__class__ is int and total > 0:
            self.total_epochs = total

    def _on_phase(self, event: dict, data: dict) -> None:
        if not self._main_rank(event):
            return
        self._progress(event)
        self.phase = data.get("phase", self.phase)
        self._totals(data)

    def _on_config(self, event: dict, data: dict) -> None:
        modes = config_modes(data)
        if modes:
            self.modes = {**self.modes, **modes}
        if self.total_epochs is not None:
            return
        for key in CONFIG_EPOCH_KEYS:
            value = data.get(key)
            if value.__class__ is int and value > 0:
                self.total_epochs = value
                return

    def _on_meta(self, event: dict, data: dict) -> None:
        if event.get("rank") is not None:
            info = self._rank(event["rank"])
            info.update({k: v for k, v in (("host", data.get("host")), ("node", event.get("node"))) if v is not None})
        argv = data.get("argv")
        if not self.command and isinstance(argv, list):
            self.command = " ".join(str(arg) for arg in argv)
        self.host = data.get("host", self.host)

    def _on_checkpoint(self, event: dict, data: dict) -> None:
        self.checkpoints += 1
        self.last_checkpoint = data

    def _on_crash(self, event: dict, data: dict) -> None:
        where = f" (in {data['phase']})" if data.get("phase") else ""
        text = f"{data.get('type', 'error')}: {data.get('message', '')}{where}"
        rank = event.get("rank")
        if rank is not None:
            first = not any("failed" in info for info in self.ranks.values())
            self._rank(rank).setdefault("failed", text)
            if not first:  # a rank that lost its peer: the first failure stays the headline
                return
            text = f"rank {rank}: {text}"
        self.crash = text

    def _on_warning(self, event: dict, data: dict) -> None:
        category = str(data.get("category") or "warning")
        self.warnings[category] = self.warnings.get(category, 0) + 1
        self.last_warning = f"{category}: {data.get('message', '')}"

    def _on_error(self, event: dict, data: dict) -> None:
        if "update_of" in data:  # an earlier error's recovery, not a new error
            return
        category = str(data.get("category") or "error")
        self.errors[category] = self.errors.get(category, 0) + 1
        phase = data.get("phase")
        where = f" (in {phase})" if phase and phase != "unknown" else ""
        self.last_error = f"{category}: {data.get('error_message', '')}{where}"
        if data.get("root_cause_rank") is not None and not (data.get("peer_lost") and self.failed_rank is not None):
            self.failed_rank = data["root_cause_rank"]  # a node that only lost its peers does not know better

    def _on_system(self, event: dict, data: dict) -> None:
        for key, value in data.items():
            if key.startswith("rank") and key.endswith("_rss_mb") and key[4:-7].isdigit():
                self._rank(int(key[4:-7]))["rss_mb"] = value
        if not event.get("node"):  # a multi-node run watched: the resource lines are node 0's
            self.system = data  # a reference swap: a renderer holding the old dict still sees a whole one

    def _on_attempt(self, event: dict, data: dict) -> None:
        if event.get("node"):  # another node's supervisor (a multi-node run watched): node 0 tells the run's story
            return
        self.attempt = data.get("attempt", self.attempt)
        self.max_attempts = data.get("max_attempts", self.max_attempts)
        if data.get("event") == "start":
            self.ranks, self.failed_rank = {}, None  # a new round of workers (they report again)
            self.status = "running"
            self.pid = data.get("pid", self.pid)
            self.end_time = self.exit_code = self.restart = None
            argv = data.get("argv")
            if not self.command and isinstance(argv, list):
                self.command = " ".join(str(arg) for arg in argv)
        elif data.get("event") == "exit":
            self.exit_code = data.get("exit_code")
            self.status = data.get("status") or _exit_status(data)
            self.end_time = event.get("t")

    def _on_restart(self, event: dict, data: dict) -> None:
        if event.get("node"):
            return
        self.status = "restarting"
        self.end_time = None
        self.restart = data


_DISPATCH = {
    "metrics": ViewState._on_metrics, "phase": ViewState._on_phase, "config": ViewState._on_config,
    "meta": ViewState._on_meta, "checkpoint": ViewState._on_checkpoint, "crash": ViewState._on_crash,
    "warning": ViewState._on_warning, "system": ViewState._on_system, "attempt": ViewState._on_attempt,
    "error": ViewState._on_error, "restart": ViewState._on_restart,
}


def _exit_status(data: dict) -> str:
    if data.get("signal"):
        return "killed"
    return "finished" if data.get("exit_code") == 0 else "failed"
