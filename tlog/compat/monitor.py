"""The seed's ``monitoring_thresholds``, checked by a daemon thread inside the training process.

Under ``tlog run`` the supervisor already samples the whole process tree from
outside; this thread adds what the seed promised the script: a warning when the
process's own RAM or GPU memory passes the script's thresholds, checked every
``check_interval_seconds``.  The thresholds are read afresh at each check, and
assigning a new dict wakes the thread at once.  A threshold warns once when it
is crossed, and again only after the value has been back under it.

Standard library only.  GPU memory is read only if the script has already
imported torch and initialised CUDA (``memory_allocated`` does not synchronise).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

MB = 1024 * 1024
DEFAULT_THRESHOLDS: dict[str, float] = {"memory_usage_mb": 1000, "gpu_memory_mb": 8000, "check_interval_seconds": 30}
MIN_INTERVAL_S = 0.05

OnReading = Callable[[float, float | None], None]
OnAlarm = Callable[[str, str], None]


def memory_mb() -> float:
    """Resident memory of this process (Linux: /proc/self/statm; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / MB if sys.platform == "darwin" else peak / 1024


def gpu_memory_mb() -> float | None:
    """Tensor memory this process holds on its current CUDA device, or None without CUDA in use."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        if cuda is None or not cuda.is_initialized():
            return None
        return cuda.memory_allocated() / MB
    except Exception:  # noqa: BLE001 - a half-initialised torch must not stop the monitor
        return None


class ThresholdMonitor:
    def __init__(self, thresholds: Callable[[], Mapping[str, Any]], on_reading: OnReading,
                 on_alarm: OnAlarm) -> None:
        self.thresholds = thresholds
        self.on_reading = on_reading
        self.on_alarm = on_alarm
        self._above: set[str] = set()
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopped

    def start(self) -> None:
        if self.active:
            return
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="tlog-compat-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def poke(self) -> None:
        """Check now (the thresholds were replaced)."""
        self._wake.set()

    def check(self) -> None:
        """One reading: hand it on, then compare it with the thresholds."""
        rss, gpu = memory_mb(), gpu_memory_mb()
        self.on_reading(rss, gpu)
        limits = self.thresholds()
        self._compare("memory", rss, limits.get("memory_usage_mb"), "High memory usage")
        if gpu is not None:
            self._compare("gpu", gpu, limits.get("gpu_memory_mb"), "High GPU memory usage")

    def _compare(self, key: str, value: float, threshold: Any, what: str) -> None:
        if not isinstance(threshold, (int, float)):
            return
        if value <= threshold:
            self._above.discard(key)
        elif key not in self._above:
            self._above.add(key)
            self.on_alarm(key, f"{what}: {value:.2f} MB (threshold {threshold:g} MB)")

    def _interval(self) -> float:
        value = self.thresholds().get("check_interval_seconds")
        return max(float(value), MIN_INTERVAL_S) if isinstance(value, (int, float)) else 30.0

    def _loop(self) -> None:
        failed = False
        while not self._stopped:
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - said once; the training never notices
                if not failed:
                    failed = True
                    self.on_alarm("monitor", f"Monitoring error: {exc!r}")
            self._wake.wait(self._interval())
            self._wake.clear()
