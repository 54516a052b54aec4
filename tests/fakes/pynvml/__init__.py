"""A stand-in for nvidia-ml-py's ``pynvml`` module, for machines without an NVIDIA driver.

Tests put ``tests/fakes`` first on ``sys.path`` so that ``import pynvml`` in the
gateway finds this module: the fake sits at the library boundary, and tlog's
own code runs unchanged.  Names, signatures, return shapes and the error
hierarchy follow nvidia-ml-py 13 (``NVMLError(code)`` maps to generated
subclasses such as ``NVMLError_LibraryNotFound``; every call before
``nvmlInit`` raises ``NVMLError_Uninitialized``).  Only the calls tlog makes are
provided.  Tests drive it with ``configure()``.
"""

from __future__ import annotations

import string
import sys
from dataclasses import dataclass, field

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0


class NVMLError(Exception):
    """Like the real one: ``NVMLError(code)`` builds the generated subclass for that code."""

    _valClassMapping: dict[int, type] = {}

    def __new__(cls, value: int) -> NVMLError:
        target = NVMLError._valClassMapping.get(value, cls) if cls is NVMLError else cls
        obj = Exception.__new__(target)
        obj.value = value
        return obj

    def __str__(self) -> str:
        return f"NVML Error with code {self.value}"


def _make_error_classes() -> None:
    """Generate NVMLError_<CamelName> for every NVML_ERROR_* code, as nvidia-ml-py does."""
    module = sys.modules[__name__]
    for name in [n for n in dir(module) if n.startswith("NVML_ERROR_")]:
        class_name = "NVMLError_" + string.capwords(name.replace("NVML_ERROR_", ""), "_").replace("_", "")
        value = getattr(module, name)

        def new(cls: type, *args: object, _value: int = value) -> NVMLError:
            return NVMLError.__new__(cls, _value)

        cls = type(class_name, (NVMLError,), {"__new__": new})
        cls.__module__ = __name__
        setattr(module, class_name, cls)
        NVMLError._valClassMapping[value] = cls


_make_error_classes()


class c_nvmlMemory_t:  # the real struct's name
    def __init__(self, total: int, used: int) -> None:
        self.total, self.used, self.free = total, used, total - used


class c_nvmlUtilization_t:  # the real struct's name
    def __init__(self, gpu: int, memory: int) -> None:
        self.gpu, self.memory = gpu, memory


class nvmlFriendlyObject:  # what the real process queries return
    def __init__(self, dictionary: dict[str, object]) -> None:
        for key, value in dictionary.items():
            setattr(self, key, value)


@dataclass
class FakeDevice:
    """One simulated GPU; ``unsupported`` names functions that raise NVMLError_NotSupported."""

    total: int = 80 * 2**30
    used: int = 0
    util: int = 0
    temp: int = 40
    power_mw: int = 100_000
    compute: list[tuple[int, int | None]] = field(default_factory=list)
    graphics: list[tuple[int, int | None]] = field(default_factory=list)
    unsupported: set[str] = field(default_factory=set)


@dataclass
class _Handle:
    index: int


class _State:
    devices: list[FakeDevice] = []
    init_error: int | None = None
    initialised = False
    init_calls = 0


def configure(devices: list[FakeDevice] | None = None, init_error: int | None = None) -> list[FakeDevice]:
    """Reset the fake: the devices it reports, or the error code nvmlInit raises."""
    _State.devices = devices if devices is not None else []
    _State.init_error = init_error
    _State.initialised = False
    _State.init_calls = 0
    return _State.devices


def init_calls() -> int:
    return _State.init_calls


def nvmlInit() -> None:
    _State.init_calls += 1
    if _State.init_error is not None:
        raise NVMLError(_State.init_error)
    _State.initialised = True


def nvmlShutdown() -> None:
    _check_init()
    _State.initialised = False


def nvmlDeviceGetCount() -> int:
    _check_init()
    return len(_State.devices)


def nvmlDeviceGetHandleByIndex(index: int) -> _Handle:
    _check_init()
    if not 0 <= index < len(_State.devices):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return _Handle(index)


def nvmlDeviceGetMemoryInfo(handle: _Handle, version: int | None = None) -> c_nvmlMemory_t:
    dev = _device(handle, "nvmlDeviceGetMemoryInfo")
    return c_nvmlMemory_t(dev.total, dev.used)


def nvmlDeviceGetUtilizationRates(handle: _Handle) -> c_nvmlUtilization_t:
    dev = _device(handle, "nvmlDeviceGetUtilizationRates")
    return c_nvmlUtilization_t(dev.util, 0)


def nvmlDeviceGetTemperature(handle: _Handle, sensor: int) -> int:
    dev = _device(handle, "nvmlDeviceGetTemperature")
    if sensor != NVML_TEMPERATURE_GPU:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return dev.temp


def nvmlDeviceGetPowerUsage(handle: _Handle) -> int:
    """Milliwatts, as the real call."""
    return _device(handle, "nvmlDeviceGetPowerUsage").power_mw


def nvmlDeviceGetComputeRunningProcesses(handle: _Handle) -> list[nvmlFriendlyObject]:
    return _procs(_device(handle, "nvmlDeviceGetComputeRunningProcesses").compute)


def nvmlDeviceGetGraphicsRunningProcesses(handle: _Handle) -> list[nvmlFriendlyObject]:
    return _procs(_device(handle, "nvmlDeviceGetGraphicsRunningProcesses").graphics)


def _procs(entries: list[tuple[int, int | None]]) -> list[nvmlFriendlyObject]:
    return [nvmlFriendlyObject({"pid": pid, "usedGpuMemory": used, "gpuInstanceId": 0xFFFFFFFF,
                                "computeInstanceId": 0xFFFFFFFF}) for pid, used in entries]


def _check_init() -> None:
    if not _State.initialised:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)


def _device(handle: _Handle, function: str) -> FakeDevice:
    _check_init()
    dev = _State.devices[handle.index]
    if function in dev.unsupported:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return dev
