"""tlog's in-script API, for what the probe cannot know.

Under ``tlog run`` these calls become events on the wire; under plain
``python`` they write the experiment directory directly.  Either way a script
that uses them never breaks because of tlog.  Imports nothing heavy: the seed's
classes (TrainingLoggingManager & co.) load lazily on first access.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from tlog import protocol as _protocol
from tlog.hook import registry as _registry

__version__ = "0.1.0"
__all__ = ["checkpoint", "config", "load", "log", "phase", "resume_checkpoint"]

_COMPAT = frozenset({
    "TrainingLoggingManager", "TrainingLogger", "TrainingProgressTracker", "ErrorInfo",
    "TrainingMetrics", "ErrorCategory", "TrainingPhase", "RobustErrorHandler",
})


def log(metrics: Mapping[str, Any] | None = None, /, *, step: int | None = None,
        epoch: int | None = None, batch: int | None = None, **values: Any) -> None:
    """Record metrics at the current step (the probe's, unless ``step`` is given)."""
    em = _registry._emitter or _registry.get()
    em.metrics(values if metrics is None else {**metrics, **values}, step, epoch, batch)


def config(values: Mapping[str, Any] | None = None, /, **more: Any) -> None:
    """Add to the run's configuration (training_config.json)."""
    data = dict(values or {})
    data.update(more)
    _registry.get().emit("config", data)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Mark a phase of the loop, so a crash or a hang inside it names it."""
    em = _registry.get()
    previous = em.phase
    em.phase = name
    em.emit("phase", {"phase": name}, step=em.step, epoch=em.epoch, batch=em.batch)
    try:
        yield
    finally:
        em.phase = previous


def checkpoint(path: str | os.PathLike, **info: Any) -> None:
    """Record a checkpoint the probe cannot see (written by another library)."""
    em = _registry.get()
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError:
        size = None
    em.emit("checkpoint", {"path": os.path.abspath(path), "bytes": size, **info},
            step=em.step, epoch=em.epoch, batch=em.batch)


def resume_checkpoint() -> str | None:
    """The newest complete checkpoint of a previous attempt, when tlog restarted this run."""
    return os.environ.get(_protocol.ENV_RESUME_CHECKPOINT) or None


def load(experiment: str | os.PathLike, log_dir: str | os.PathLike | None = None, pandas: bool | None = None) -> Any:
    """A run's metrics, resource samples, errors, config and status, for a notebook: see ``tlog.loading``.

    Imported here on first call only, so a training script's ``import tlog`` pulls in nothing heavy."""
    from tlog.loading import load as _load

    return _load(experiment, log_dir, pandas)


def __getattr__(name: str) -> Any:
    if name in _COMPAT:
        from tlog import compat

        return getattr(compat, name)
    raise AttributeError(f"module 'tlog' has no attribute {name!r}")
