"""The seed's TrainingProgressTracker, in bounded memory.

The seed kept every metrics dict of the run in lists.  Here ``metrics_history``
and each ``performance_metrics`` list are windows of the last
``HISTORY_WINDOW`` values, while ``aggregates`` (count, mean, min, max, last of
every numeric metric) and ``latest`` (the last value of every key) cover the
whole run; the summary is built from those, so its bests are bests of the run,
not of the window.  The plot draws loss, accuracy and learning rate over the
whole run from ``Series`` that thin themselves as they fill.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tlog.compat.logger import HISTORY_WINDOW, TrainingLogger
from tlog.store import layout

PLOT_POINTS = 2000
PLOTTED = ("loss", "accuracy", "learning_rate")
DEFAULT_PLOT_CONFIG: dict[str, Any] = {"figure_size": (15, 10), "dpi": 300, "save_format": "png"}


class Aggregate:
    """Whole-run statistics of one numeric metric in O(1) memory."""

    __slots__ = ("count", "last", "max", "min", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.last: float | None = None

    def add(self, value: float) -> None:
        self.count += 1
        self.last = value
        if value == value:  # noqa: PLR0124 - NaN is counted, not compared
            self.total += value
            if value < self.min:
                self.min = value
            if value > self.max:
                self.max = value

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


class Series:
    """(step, value) points of the whole run in at most ``limit`` points.

    When full, every other point is dropped and from then on only every
    ``stride``-th value is kept, so the series spans the whole run at an even
    resolution for O(1) amortised work per value.
    """

    def __init__(self, limit: int = PLOT_POINTS) -> None:
        self.limit = limit
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.stride = 1
        self._seen = 0

    def add(self, x: float, y: float) -> None:
        self._seen += 1
        if self._seen % self.stride:
            return
        self.xs.append(x)
        self.ys.append(y)
        if len(self.xs) >= self.limit:
            self.xs, self.ys = self.xs[::2], self.ys[::2]
            self.stride *= 2


class TrainingProgressTracker:
    def __init__(self, logger: TrainingLogger) -> None:
        self.logger = logger
        self.metrics_history: deque[dict[str, Any]] = deque(maxlen=HISTORY_WINDOW)
        self.performance_metrics: defaultdict[str, deque[float]] = defaultdict(lambda: deque(maxlen=HISTORY_WINDOW))
        self.error_summary = logger.error_stats.categories
        self.aggregates: dict[str, Aggregate] = {}
        self.latest: dict[str, Any] = {}
        self.series = {key: Series() for key in PLOTTED}
        self.plot_config: dict[str, Any] = dict(DEFAULT_PLOT_CONFIG)

    def update_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Add one metrics dict to the window and to the whole-run aggregates."""
        entry = dict(metrics)
        self.metrics_history.append(entry)
        self.latest.update(entry)
        step: int | None = None
        for key, value in entry.items():
            if value.__class__ is not float and value.__class__ is not int:
                continue
            self.performance_metrics[key].append(value)
            agg = self.aggregates.get(key)
            if agg is None:
                agg = self.aggregates[key] = Aggregate()
            agg.add(value)
            series = self.series.get(key)
            if series is not None:
                if step is None:
                    step = self.logger.current_step() or 0
                series.add(step, value)

    def get_training_summary(self) -> dict[str, Any]:
        """The seed's summary keys: current values are the latest seen, bests are over the whole run."""
        if not self.metrics_history:
            return {}
        latest, metrics = self.latest, self.logger.metrics
        loss, acc = self.aggregates.get("loss"), self.aggregates.get("accuracy")
        return {
            "current_epoch": latest.get("epoch", 0),
            "current_batch": latest.get("batch", 0),
            "total_batches": latest.get("total_batches") or metrics.total_batches,
            "current_loss": latest.get("loss", 0.0),
            "current_accuracy": latest.get("accuracy", 0.0),
            "best_loss": loss.min if loss is not None and loss.count else float("inf"),
            "best_accuracy": acc.max if acc is not None and acc.max > -math.inf else 0.0,
            "learning_rate": latest.get("learning_rate", 0.0),
            "training_time": metrics.training_time,
            "error_count": self.logger.error_stats.total,
            "memory_usage": metrics.memory_usage,
            "gpu_memory": metrics.gpu_memory,
        }

    def get_error_summary(self) -> dict[str, Any]:
        stats = self.logger.error_stats
        return {
            "total_errors": stats.total,
            "error_categories": dict(stats.categories),
            "error_phases": dict(stats.phases),
            "recovery_success_rate": self._calculate_recovery_success_rate(),
        }

    def _calculate_recovery_success_rate(self) -> float:
        return self.logger.error_stats.success_rate()

    def create_training_plots(self, save_dir: str | Path | None = None) -> Path | None:
        """Loss, accuracy, learning rate against the step, and errors by category, as the seed drew them.

        ``plot_config`` sets figure_size, dpi and save_format; the file is
        ``<save_dir or experiment_dir/plots>/training_progress.<format>``.  Returns its path
        (None, as in the seed, when nothing was logged yet).
        """
        if not self.metrics_history:
            return None
        from tlog.compat.plots import draw

        target = Path(save_dir) if save_dir else self.logger.experiment_dir / layout.PLOTS
        return draw(self, target, {**DEFAULT_PLOT_CONFIG, **(self.plot_config or {})})
