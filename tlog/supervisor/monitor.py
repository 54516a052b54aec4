"""Resource sampling of the child's process tree, from outside the child.

Sampling from the supervisor rather than from a hook inside the script means
the numbers exist for any script (and keep coming while the script is stuck in
a CUDA call or a deadlocked DataLoader), and a monitor that crashes cannot take
the training with it.

Windows and peaks.  The tree is *read* every ``interval`` seconds, but a CSV
*row* is handed to ``on_sample`` only every ``window`` readings, carrying the
latest values plus ``rss_min_mb``/``rss_mean_mb``/``rss_max_mb`` (and
``gpuN_max_mb``) over the readings since the previous row.  A spike shorter than
a row's period thus still shows in that row's max, while the CSV stays small.
Thresholds and the running peaks (``peaks()``) are evaluated on every reading,
not every row, and ``recent()`` keeps every reading.  ``stop()`` takes a final
reading and flushes a partial window so the last seconds are never lost.

RSS is summed over the tree; pages shared copy-on-write between a forked
DataLoader worker and its parent are counted in both, so the total can exceed
what the kernel will charge.  That errs on the side of warning early, and
proportional set size would cost a walk of every mapping on every sample.

Ranks.  In a distributed run the session tells the monitor which pid is which
rank's worker (``ranks``, from each worker's ``meta`` event); each reading then
also carries ``rank<r>_rss_mb`` (the worker and its own children, DataLoader
workers included) and, where NVML lists processes, ``rank<r>_gpu_mb``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import psutil

from tlog.supervisor.limits import MemoryScope, memory_scope
from tlog.supervisor.nvml import DeviceReading, NvmlGateway
from tlog.supervisor.ranks import rank_memory

MB = 1024 * 1024
HOST_COLUMNS = ("t", "elapsed_s", "rss_mb", "rss_min_mb", "rss_mean_mb", "rss_max_mb", "rss_peak_mb",
                "cpu_percent", "nprocs", "mem_limit_mb", "mem_limit_source", "headroom_mb")
GPU_FIELDS = ("used_mb", "method", "max_mb", "peak_mb", "device_used_mb", "total_mb",
              "util", "temp_c", "power_w")
# (metric, category, value, threshold, fires when above (else below), message)
_Check = tuple[str, str, float, float, bool, str]


def columns(sample: Mapping[str, Any]) -> list[str]:
    """The CSV header for a sample: host columns in a fixed order, then each GPU's, by index."""
    return [*HOST_COLUMNS, *(f"gpu{i}_{name}" for i in _gpu_indices(sample) for name in GPU_FIELDS)]


def _gpu_indices(sample: Mapping[str, Any]) -> list[int]:
    return sorted({int(key[3:key.index("_")]) for key in sample if key.startswith("gpu") and "_" in key})


@dataclass(frozen=True)
class Thresholds:
    """When to warn.  None disables a check.

    ``gpu_fraction`` compares the whole device's used memory to its total, since a
    CUDA OOM happens when the device is full whoever filled it; ``gpu_mb`` compares
    the run's own GPU memory.  ``hysteresis`` is relative: a warning re-arms once the
    value is back ``hysteresis * threshold`` on the safe side, so noise around the
    line does not repeat it.
    """

    rss_fraction: float | None = 0.90
    headroom_fraction: float | None = 0.10
    gpu_fraction: float | None = 0.90
    rss_mb: float | None = None
    gpu_mb: float | None = None
    check_interval_s: float | None = None
    hysteresis: float = 0.05

    _SEED_KEYS = {"memory_usage_mb": "rss_mb", "gpu_memory_mb": "gpu_mb",
                  "check_interval_seconds": "check_interval_s"}

    @classmethod
    def from_seed(cls, seed: Mapping[str, Any] | None) -> Thresholds:
        """Build from a config's ``monitoring_thresholds``; our own field names are accepted too."""
        names = {f.name for f in fields(cls)}
        values = {}
        for key, value in (seed or {}).items():
            name = cls._SEED_KEYS.get(key, key)
            if name in names and value is not None:
                values[name] = float(value)
        return cls(**values)


@dataclass
class _Crossing:
    """Fires once when a value crosses its threshold, then stays quiet until it is back past the band."""

    armed: bool = True

    def update(self, value: float, threshold: float, above: bool, hysteresis: float) -> bool:
        crossed = value >= threshold if above else value <= threshold
        if self.armed and crossed:
            self.armed = False
            return True
        band = threshold * hysteresis
        if not self.armed and (value < threshold - band if above else value > threshold + band):
            self.armed = True
        return False


@dataclass
class _Window:
    """RSS and GPU extremes over the readings since the last row."""

    n: int = 0
    lo: float = math.inf
    hi: float = 0.0
    total: float = 0.0
    gpu_hi: dict[int, float] = field(default_factory=dict)

    def add(self, rss_mb: float, gpu_used: Mapping[int, float]) -> None:
        self.n += 1
        self.lo, self.hi, self.total = min(self.lo, rss_mb), max(self.hi, rss_mb), self.total + rss_mb
        for i, used in gpu_used.items():
            self.gpu_hi[i] = max(self.gpu_hi.get(i, 0.0), used)


class _Tracked:
    """A cached psutil.Process: keeps cpu_percent's state between samples, and a lazy label."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self._label: str | None = None

    def label(self) -> str:
        if self._label is None:
            try:
                cmd = " ".join(self.proc.cmdline()[:4]) or self.proc.name()
            except psutil.Error:
                cmd = "?"
            self._label = cmd if len(cmd) <= 80 else cmd[:77] + "..."
        return self._label


class Monitor:
    """Samples the child's process tree on a daemon thread; see the module docstring for the design."""

    def __init__(self, pid: int, *, interval: float | None = None, window: int = 5,
                 on_sample: Callable[[dict], None], on_warning: Callable[[dict], None] | None = None,
                 thresholds: Thresholds | None = None, nvml: NvmlGateway | None = None,
                 history: int = 600) -> None:
        self.thresholds = thresholds or Thresholds()
        self.interval = interval or self.thresholds.check_interval_s or 1.0
        self.window = max(1, window)
        self.on_sample, self.on_warning = on_sample, on_warning
        self._owns_nvml = nvml is None
        self.nvml = nvml or NvmlGateway()
        if self.nvml.on_warning is None:
            self.nvml.on_warning = self._nvml_warning
        self.pid = pid
        self._t0 = time.time()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._procs: dict[int, _Tracked] = {}
        self.ranks: dict[int, int] = {}  # pid -> rank of a distributed run's workers (set by the session)
        self._parents: dict[int, int] = {}
        self._devices: list[DeviceReading] = []
        self._scope: tuple[int, MemoryScope] | None = None
        self._gpu_baseline: dict[int, int] = {}
        self._window = _Window()
        self._last_row: dict[str, Any] | None = None
        self._recent: deque[dict[str, Any]] = deque(maxlen=history)
        self._crossings: dict[str, _Crossing] = {}
        self._peak: dict[str, Any] = {"rss_mb": 0.0, "t": None, "procs": []}
        self._gpu_peaks: dict[int, dict[str, Any]] = {}
        self._failed = False

    def baseline(self) -> None:
        """Remember each GPU's used memory before the child starts, for the device-minus-baseline fallback."""
        with self._lock:
            self._gpu_baseline = {d.index: d.used for d in self.nvml.read()}

    def start(self) -> None:
        """Start the sampler thread (one reading immediately, then every ``interval``)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tlog-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread promptly, take a final reading and flush the partial window as a row."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.interval))
            if self._thread.is_alive():  # stuck in a hung driver call: do not hang the supervisor too
                return
            self._thread = None
        self._safe_sample()
        with self._lock:
            if self._window.n and self._last_row is not None:
                self._emit(self._last_row)
        if self._owns_nvml:
            self.nvml.close()

    def sample_once(self) -> dict[str, Any]:
        """Take one reading and return it as a row; hand it to on_sample when it completes a window."""
        with self._lock:
            row = self._reading()
            self._recent.append(row)
            self._check_thresholds(row)
            if self._window.n >= self.window:
                self._emit(row)
            return dict(row)

    def peaks(self) -> dict[str, Any]:
        """Peaks since start for the run summary and crash records (MB, epoch seconds).

        GPU peaks are keyed "gpu0", "gpu1"... like the columns, so the dict stays JSON-ready.
        """
        with self._lock:
            last = self._last_row or {}
            return {"rss_peak_mb": self._peak["rss_mb"], "rss_peak_t": self._peak["t"],
                    "rss_peak_procs": [dict(p) for p in self._peak["procs"]],
                    "mem_limit_mb": last.get("mem_limit_mb"),
                    "mem_limit_source": last.get("mem_limit_source"),
                    "gpu": {f"gpu{i}": dict(p) for i, p in sorted(self._gpu_peaks.items())}}

    def recent(self, seconds: float) -> list[dict[str, Any]]:
        """Readings of the last ``seconds`` (every reading, not only rows), oldest first."""
        with self._lock:
            since = time.time() - seconds
            return [dict(r) for r in self._recent if r["t"] >= since]

    def _run(self) -> None:
        while True:
            started = time.monotonic()
            self._safe_sample()
            if self._stop.wait(max(0.0, self.interval - (time.monotonic() - started))):
                return

    def _safe_sample(self) -> None:
        try:
            self.sample_once()
        except Exception as exc:  # noqa: BLE001 - a monitor failure must never reach the run
            if not self._failed:
                self._failed = True
                self._warn("memory", "sampler", f"resource sample failed and was skipped: {exc!r}")

    def _emit(self, row: dict[str, Any]) -> None:
        self._window = _Window()
        self.on_sample(dict(row))

    def _reading(self) -> dict[str, Any]:
        now = time.time()
        tree, cpu = self._read_tree()
        rss_mb = sum(rss for _, rss in tree) / MB
        limit, source, headroom = self._memory_scope().status()
        gpus = self._read_gpus({pid for pid, _ in tree})
        self._window.add(rss_mb, {i: g["used_mb"] for i, g in gpus.items()})
        self._update_peaks(now, rss_mb, tree, gpus)
        w = self._window
        row: dict[str, Any] = {
            "t": now, "elapsed_s": round(now - self._t0, 3), "rss_mb": rss_mb,
            "rss_min_mb": w.lo, "rss_mean_mb": w.total / w.n, "rss_max_mb": w.hi,
            "rss_peak_mb": self._peak["rss_mb"], "cpu_percent": cpu, "nprocs": len(tree),
            "mem_limit_mb": limit / MB, "mem_limit_source": source, "headroom_mb": headroom / MB}
        for i, g in sorted(gpus.items()):
            g = {**g, "max_mb": w.gpu_hi[i], "peak_mb": self._gpu_peaks[i]["peak_mb"]}
            row.update({f"gpu{i}_{name}": g[name] for name in GPU_FIELDS})
        if self.ranks:
            row.update(rank_memory(tree, self._parents, self.ranks, self._devices))
        self._last_row = row
        return row

    def _read_tree(self) -> tuple[list[tuple[int, int]], float]:
        """(pid, rss bytes) of the child and all descendants, and their summed CPU %.

        Any process may exit between being listed and being read; it is simply left
        out of this reading.
        """
        root = self._tracked_root()
        if root is None:
            return [], 0.0
        try:
            kids = root.proc.children(recursive=True)
        except psutil.Error:
            kids = []
        tree, cpu, seen, parents = [], 0.0, {}, {}
        for proc in (root.proc, *kids):
            tracked = self._procs.get(proc.pid)
            if tracked is None or tracked.proc != proc:  # new, or the pid was reused
                tracked = _Tracked(proc)
            try:
                with tracked.proc.oneshot():
                    rss = tracked.proc.memory_info().rss
                    cpu += tracked.proc.cpu_percent(interval=None)
                    if self.ranks:
                        parents[proc.pid] = tracked.proc.ppid()
            except psutil.Error:
                continue
            seen[proc.pid] = tracked
            tree.append((proc.pid, rss))
        self._procs, self._parents = seen, parents
        return tree, cpu

    def _tracked_root(self) -> _Tracked | None:
        tracked = self._procs.get(self.pid)
        if tracked is not None:
            return tracked
        try:
            return _Tracked(psutil.Process(self.pid))
        except psutil.Error:
            return None

    def _memory_scope(self) -> MemoryScope:
        """Resolved once per child pid: the cgroup paths do not move, their contents are re-read."""
        if self._scope is None or self._scope[0] != self.pid:
            self._scope = (self.pid, memory_scope(self.pid))
        return self._scope[1]

    def _read_gpus(self, pids: set[int]) -> dict[int, dict[str, Any]]:
        self._devices = self.nvml.read()
        return {d.index: self._gpu_columns(d, pids) for d in self._devices}

    def _gpu_columns(self, dev: DeviceReading, pids: set[int]) -> dict[str, Any]:
        used, method = self._tree_gpu_use(dev, pids)
        return {"used_mb": used / MB, "method": method, "device_used_mb": dev.used / MB,
                "total_mb": dev.total / MB, "util": dev.util, "temp_c": dev.temp_c, "power_w": dev.power_w}

    def _tree_gpu_use(self, dev: DeviceReading, pids: set[int]) -> tuple[int, str]:
        """The tree's GPU memory: summed over its processes when NVML shows them with sizes.

        NVML lists host PIDs, so inside a container's PID namespace nothing matches;
        then (and when the sizes are unknown or the list is refused) the best estimate
        is the device's growth since ``baseline()`` (zero if it was never taken).
        """
        if dev.processes is not None:
            mine = [p for p in dev.processes if p.pid in pids]
            if not dev.processes or (mine and all(p.used is not None for p in mine)):
                return sum(p.used or 0 for p in mine), "process"
        return max(dev.used - self._gpu_baseline.get(dev.index, 0), 0), "device-baseline"

    def _update_peaks(self, now: float, rss_mb: float, tree: list[tuple[int, int]],
                      gpus: Mapping[int, Mapping[str, Any]]) -> None:
        if rss_mb > self._peak["rss_mb"] or self._peak["t"] is None:
            procs = [{"pid": pid, "cmd": self._procs[pid].label(), "rss_mb": rss / MB}
                     for pid, rss in sorted(tree, key=lambda e: -e[1])]
            self._peak = {"rss_mb": rss_mb, "t": now, "procs": procs}
        for i, g in gpus.items():
            peak = self._gpu_peaks.get(i)
            if peak is None or g["used_mb"] > peak["peak_mb"]:
                self._gpu_peaks[i] = {"peak_mb": g["used_mb"], "t": now, "method": g["method"],
                                      "total_mb": g["total_mb"]}

    def _check_thresholds(self, row: Mapping[str, Any]) -> None:
        for metric, category, value, threshold, above, message in self._checks(row):
            crossing = self._crossings.setdefault(metric, _Crossing())
            if crossing.update(value, threshold, above, self.thresholds.hysteresis):
                self._warn(category, metric, message, value, threshold)

    def _checks(self, row: Mapping[str, Any]) -> Iterator[_Check]:
        th = self.thresholds
        rss, limit, source = row["rss_mb"], row["mem_limit_mb"], row["mem_limit_source"]
        if th.rss_fraction is not None and limit > 0:
            yield ("rss_fraction", "memory", rss / limit, th.rss_fraction, True,
                   f"process tree RSS {rss:.0f} MB is {rss / limit:.0%} of the {limit:.0f} MB "
                   f"memory limit ({source})")
        if th.rss_mb is not None:
            yield ("rss_mb", "memory", rss, th.rss_mb, True,
                   f"process tree RSS {rss:.0f} MB reached the {th.rss_mb:.0f} MB threshold")
        if th.headroom_fraction is not None and limit > 0:
            room = row["headroom_mb"]
            yield ("headroom_fraction", "memory", room / limit, th.headroom_fraction, False,
                   f"only {room:.0f} MB ({room / limit:.0%}) left before the {limit:.0f} MB "
                   f"memory limit ({source})")
        for i in _gpu_indices(row):
            yield from self._gpu_checks(i, row)

    def _gpu_checks(self, i: int, row: Mapping[str, Any]) -> Iterator[_Check]:
        th = self.thresholds
        used, device, total = row[f"gpu{i}_used_mb"], row[f"gpu{i}_device_used_mb"], row[f"gpu{i}_total_mb"]
        if th.gpu_fraction is not None and total > 0:
            yield (f"gpu{i}_fraction", "device", device / total, th.gpu_fraction, True,
                   f"GPU {i} memory {device:.0f} MB is {device / total:.0%} of its {total:.0f} MB")
        if th.gpu_mb is not None:
            yield (f"gpu{i}_mb", "device", used, th.gpu_mb, True,
                   f"GPU {i} memory of the run {used:.0f} MB reached the {th.gpu_mb:.0f} MB threshold")

    def _nvml_warning(self, message: str) -> None:
        self._warn("device", "nvml", message)

    def _warn(self, category: str, metric: str, message: str, value: float | None = None,
              threshold: float | None = None) -> None:
        if self.on_warning is not None:
            self.on_warning({"category": category, "message": message, "metric": metric,
                             "value": value, "threshold": threshold})
