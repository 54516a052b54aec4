"""The one door to NVML: lazy, never raising, warning once.

GPU telemetry is a bonus; a laptop without a driver, a container without the
library, a board that does not report power, or a GPU that falls off the bus
must never cost the run or flood the log.  So every NVML call goes through
here: ``pynvml`` (from the nvidia-ml-py package) is imported and ``nvmlInit``
called on first use, a failure there disables the gateway for good with one
warning, and a failing optional query (utilisation, temperature, power,
process lists) yields None for that field.  Quantities come back raw (bytes,
watts); deciding whose memory is whose is the monitor's job.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class GpuProcess:
    """One process NVML sees on a device; ``used`` is None where the driver cannot tell (WDDM)."""

    pid: int
    used: int | None


@dataclass(frozen=True)
class DeviceReading:
    """One device at one instant; optional fields are None when the board does not report them.

    ``processes`` is None when the driver refused to list processes (permissions,
    vGPU/MIG), which is different from an empty list (nobody is using it).
    """

    index: int
    total: int
    used: int
    util: float | None
    temp_c: float | None
    power_w: float | None
    processes: tuple[GpuProcess, ...] | None


class NvmlGateway:
    """Lazy NVML access for the sampler thread (and ``baseline()`` before it starts)."""

    def __init__(self, on_warning: Callable[[str], None] | None = None) -> None:
        self.on_warning = on_warning
        self._nvml: ModuleType | None = None
        self._handles: list[Any] = []
        self._tried = False
        self._warned: set[str] = set()

    def available(self) -> bool:
        """Whether NVML initialised and sees at least one device (initialises on first call)."""
        self._ensure()
        return bool(self._handles)

    def read(self) -> list[DeviceReading]:
        """Every device's reading; empty when NVML is missing, failing or sees no GPU."""
        if not self.available():
            return []
        readings = []
        for index, handle in enumerate(self._handles):
            try:
                reading = self._read_device(index, handle)
            except Exception as exc:  # noqa: BLE001 - a lost GPU or a broken binding must not stop sampling
                self._warn(f"read:{index}", f"NVML could not read GPU {index}: {exc}")
                continue
            readings.append(reading)
        return readings

    def close(self) -> None:
        """Release NVML; a later call re-initialises, so this is safe between restarts."""
        if self._nvml is not None and self._tried:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutting down a failing library is best effort
                pass
        self._tried, self._handles = False, []

    def _ensure(self) -> None:
        if self._tried:
            return
        self._tried = True
        try:
            import pynvml
        except ImportError as exc:
            self._warn("init", f"GPU monitoring off: nvidia-ml-py (pynvml) is not importable ({exc})")
            return
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:  # noqa: BLE001 - NVMLError subclasses, or OSError from a broken driver
            self._warn("init", f"GPU monitoring off: NVML unavailable ({type(exc).__name__}: {exc})")
            self._handles = []
            return
        self._nvml = pynvml

    def _read_device(self, index: int, handle: Any) -> DeviceReading:
        nv = self._nvml
        assert nv is not None  # only reached once _ensure() found devices
        memory = nv.nvmlDeviceGetMemoryInfo(handle)
        util = self._optional("utilisation", lambda: nv.nvmlDeviceGetUtilizationRates(handle).gpu)
        temp = self._optional("temperature",
                              lambda: nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))
        power = self._optional("power", lambda: nv.nvmlDeviceGetPowerUsage(handle) / 1000.0)
        return DeviceReading(index=index, total=int(memory.total), used=int(memory.used),
                             util=_float(util), temp_c=_float(temp), power_w=_float(power),
                             processes=self._processes(handle))

    def _processes(self, handle: Any) -> tuple[GpuProcess, ...] | None:
        """Compute and graphics processes merged by pid (a process can be in both lists)."""
        nv = self._nvml
        assert nv is not None
        merged: dict[int, int | None] = {}
        listed = False
        for query in (nv.nvmlDeviceGetComputeRunningProcesses, nv.nvmlDeviceGetGraphicsRunningProcesses):
            procs = self._optional("process list", functools.partial(query, handle))
            if procs is None:
                continue
            listed = True
            for p in procs:
                merged[p.pid] = _larger(merged.get(p.pid), p.usedGpuMemory)
        if not listed:
            return None
        return tuple(GpuProcess(int(pid), used) for pid, used in merged.items())

    def _optional(self, what: str, query: Callable[[], Any]) -> Any:
        """Run a query that some boards do not support; warn once for failures other than "not supported"."""
        nv = self._nvml
        assert nv is not None
        try:
            return query()
        except nv.NVMLError as exc:
            if not isinstance(exc, nv.NVMLError_NotSupported):
                self._warn(what, f"NVML {what} query failing ({exc}); reported as missing")
            return None

    def _warn(self, key: str, message: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        if self.on_warning is not None:
            self.on_warning(message)


def _larger(a: int | None, b: int | None) -> int | None:
    if a is None or b is None:
        return b if a is None else a
    return max(a, b)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
