"""The seed's vocabulary: error categories, training phases, the metrics record, the error record.

Runs in the training process: standard library only.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from enum import Enum
from typing import Any

MAX_TEXT = 4000
MAX_ITEMS = 1000


class ErrorCategory(Enum):
    DATA_LOADING = "data_loading"
    MODEL_INFERENCE = "model_inference"
    LOSS_COMPUTATION = "loss_computation"
    GRADIENT_COMPUTATION = "gradient_computation"
    OPTIMIZATION = "optimization"
    MEMORY = "memory"
    DEVICE = "device"
    CHECKPOINT = "checkpoint"
    VALIDATION = "validation"
    CONFIGURATION = "configuration"
    NETWORK = "network"
    SYSTEM = "system"
    UNKNOWN = "unknown"


class TrainingPhase(Enum):
    INITIALIZATION = "initialization"
    DATA_LOADING = "data_loading"
    MODEL_SETUP = "model_setup"
    TRAINING_START = "training_start"
    EPOCH_START = "epoch_start"
    BATCH_START = "batch_start"
    FORWARD_PASS = "forward_pass"
    LOSS_COMPUTATION = "loss_computation"
    BACKWARD_PASS = "backward_pass"
    OPTIMIZATION_STEP = "optimization_step"
    BATCH_END = "batch_end"
    EPOCH_END = "epoch_end"
    VALIDATION = "validation"
    CHECKPOINT_SAVING = "checkpoint_saving"
    TRAINING_END = "training_end"
    ERROR_RECOVERY = "error_recovery"


def coerce(kind: type[Enum], item: Any) -> Any:
    """The member whose value is ``item`` (``"memory"`` -> ErrorCategory.MEMORY); anything else unchanged."""
    if isinstance(item, str):
        try:
            return kind(item)
        except ValueError:
            return item
    return item


def enum_value(item: Any) -> str:
    """An enum member's value, or the string itself (callers may pass ``"validation"``)."""
    return item.value if isinstance(item, Enum) else str(item)


@dataclass(slots=True)
class TrainingMetrics:
    """The run's current state in the seed's CSV columns: latest values and bests.

    The CSV itself is written by tlog's store (one row per step, derived columns
    filled there); this object is what the script can read at any moment.
    """

    epoch: int = 0
    batch: int = 0
    total_batches: int = 0
    loss: float = 0.0
    accuracy: float = 0.0
    learning_rate: float = 0.0
    gradient_norm: float = 0.0
    memory_usage: float = 0.0
    gpu_memory: float = 0.0
    training_time: float = 0.0
    validation_loss: float = 0.0
    validation_accuracy: float = 0.0
    best_loss: float = math.inf
    best_accuracy: float = 0.0
    patience_counter: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


METRIC_FIELDS = frozenset(f.name for f in fields(TrainingMetrics))


@dataclass(slots=True)
class ErrorInfo:
    """One logged error, as the seed describes it, plus what tlog needs to amend its record later.

    ``recovery_successful`` is False when no recovery was attempted, None while
    one is pending (the action ran; no step has completed since), then True or
    False for good.
    """

    category: ErrorCategory
    phase: TrainingPhase
    error_message: str
    traceback: str
    timestamp: datetime
    epoch: int
    batch: int
    context_data: dict[str, Any] = field(default_factory=dict)
    recovery_attempted: bool = False
    recovery_successful: bool | None = False
    recovery_time: float | None = None
    id: str = ""
    step: int | None = None
    error_type: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The record of training_errors.json: the seed's fields first, then tlog's."""
        return {
            "category": enum_value(self.category),
            "phase": enum_value(self.phase),
            "error_message": self.error_message,
            "timestamp": self.timestamp.isoformat(timespec="seconds"),
            "epoch": self.epoch,
            "batch": self.batch,
            "recovery_attempted": self.recovery_attempted,
            "recovery_successful": self.recovery_successful,
            "recovery_time": self.recovery_time,
            "id": self.id,
            "step": self.step,
            "type": self.error_type,
            "source": "log_error",
            "context": jsonable(self.context_data),
            "traceback": self.traceback,
        }


@dataclass
class ErrorStats:
    """Whole-run error counts, exact however long the run (the history itself is a bounded window)."""

    total: int = 0
    categories: Counter = field(default_factory=Counter)
    phases: Counter = field(default_factory=Counter)
    attempted: int = 0
    successful: int = 0

    def add(self, info: ErrorInfo) -> None:
        self.total += 1
        self.categories[enum_value(info.category)] += 1
        self.phases[enum_value(info.phase)] += 1

    def success_rate(self) -> float:
        """Confirmed recoveries over attempted ones; a pending recovery counts as not (yet) successful."""
        return self.successful / self.attempted if self.attempted else 0.0


def jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of a config or context value, so one odd object never switches the emitter off.

    Scalars stay, containers are copied (bounded), other objects become their
    short one-line ``str`` (a path, a device) or else their type name: a model
    in an error's context is not serialised.
    """
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "..."
    if isinstance(value, Enum):
        return value.value
    if depth < 4 and isinstance(value, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in list(value.items())[:MAX_ITEMS]}
    if depth < 4 and isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1) for v in list(value)[:MAX_ITEMS]]
    if isinstance(value, datetime):
        return value.isoformat()
    try:
        text = str(value)
    except Exception:  # noqa: BLE001 - a broken __str__ is not the script's problem here
        text = ""
    return text if text and len(text) <= 200 and "\n" not in text else f"<{type(value).__name__}>"
