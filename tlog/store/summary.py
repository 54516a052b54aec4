"""The summary of a run, folded event by event.

One accumulator serves the writer (live and final training_summary.json) and
the reports (``tlog summary`` on any experiment, running or crashed), so the
two can never disagree.  O(1) work and memory per event.
"""

from __future__ import annotations

import math
from typing import Any

from tlog.protocol import number

_MIN_WORDS = ("loss", "err", "perplexity", "ppl", "mse", "mae", "rmse", "nll", "wer", "cer")
_MAX_WORDS = ("acc", "f1", "precision", "recall", "auc", "iou", "bleu", "rouge", "score", "map", "dice")
_PEAK_KEYS = {"rss_max_mb": "rss_mb", "rss_peak_mb": "rss_mb", "mem_limit_mb": "mem_limit_mb"}
_CONTEXT_KEYS = frozenset({"total_batches", "total_epochs"})
_NO_BEST = frozenset({"learning_rate", "lr", "total_batches", "momentum", "epoch", "batch", "step"})


def metric_mode(name: str, overrides: dict[str, str] | None = None) -> str | None:
    """'min' for loss-like names, 'max' for accuracy-like ones, None when 'best' means nothing."""
    if overrides and name in overrides:
        return overrides[name]
    low = name.lower()
    if low in _NO_BEST or low.startswith(("lr", "learning_rate", "grad")):
        return None
    if any(w in low for w in _MIN_WORDS):
        return "min"
    if any(w in low for w in _MAX_WORDS):
        return "max"
    return None


class MetricStats:
    __slots__ = ("best", "best_step", "count", "last", "last_step", "max", "min", "mode", "nonfinite")

    def __init__(self, mode: str | None) -> None:
        self.mode = mode
        self.last: float | None = None
        self.last_step: int | None = None
        self.best: float | None = None
        self.best_step: int | None = None
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.nonfinite = 0

    def add(self, value: float, step: int | None) -> None:
        self.count += 1
        self.last = value
        self.last_step = step
        if value - value != 0:
            self.nonfinite += 1
            return
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        mode = self.mode
        if mode is not None and (self.best is None or (value < self.best if mode == "min" else value > self.best)):
            self.best = value
            self.best_step = step

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"last": _json_num(self.last), "last_step": self.last_step, "count": self.count}
        if self.count > self.nonfinite:
            out["min"], out["max"] = self.min, self.max
        if self.mode is not None:
            out.update(mode=self.mode, best=self.best, best_step=self.best_step)
        if self.nonfinite:
            out["nonfinite"] = self.nonfinite
        return out


def _json_num(value: float | None) -> float | str | None:
    if value is None or value - value == 0:
        return value
    return "nan" if value != value else ("inf" if value > 0 else "-inf")  # noqa: PLR0124


class SummaryBuilder:
    """Feed events with ``add``; ``result()`` gives the summary document."""

    def __init__(self, experiment: str = "", modes: dict[str, str] | None = None) -> None:
        self.experiment = experiment
        self.modes = modes or {}
        self.metrics: dict[str, MetricStats] = {}
        self.first_t: float | None = None
        self.last_t: float | None = None
        self.max_step: int | None = None
        self.max_epoch: int | None = None
        self.rows = 0
        self.meta: dict[str, Any] = {}
        self.config: dict[str, Any] = {}
        self.attempts: list[dict[str, Any]] = []
        self.status = "unknown"
        self.checkpoints = 0
        self.newest_checkpoint: dict[str, Any] | None = None
        self.errors: list[dict[str, Any]] = []
        self.errors_total = 0
        self.warnings: dict[str, int] = {}
        self.peaks: dict[str, float] = {}
        self.peak_detail: dict[str, Any] | None = None
        self.malformed = 0

    def add(self, event: dict) -> None:
        t = event.get("t")
        if self.first_t is None:
            self.first_t = t
        self.last_t = t
        kind = event["kind"]
        if kind == "metrics":
            self._metrics(event)
        else:
            handler = _HANDLERS.get(kind)
            if handler is not None:
                handler(self, event)

    def _metrics(self, event: dict) -> None:
        if event.get("rank") not in (None, 0):
            return
        step = event.get("step")
        if step is not None and (self.max_step is None or step > self.max_step):
            self.max_step = step
        epoch = event.get("epoch")
        if epoch is not None and (self.max_epoch is None or epoch > self.max_epoch):
            self.max_epoch = epoch
        self.rows += 1
        stats = self.metrics
        for key, raw in event["data"].items():
            if key in _CONTEXT_KEYS:
                continue
            value = raw if raw.__class__ is float else number(raw)
            if value is None:
                continue
            st = stats.get(key)
            if st is None:
                st = stats[key] = MetricStats(metric_mode(key, self.modes))
            st.add(value, step)

    def _attempt(self, event: dict) -> None:
        data = event["data"]
        if data.get("event") == "start":
            self.attempts.append({"attempt": data.get("attempt", len(self.attempts) + 1),
                                  "start": event.get("t"), "pid": data.get("pid")})
            self.status = "running"
        elif data.get("event") == "exit":
            if not self.attempts:
                self.attempts.append({"attempt": data.get("attempt", 1), "start": None})
            current = self.attempts[-1]
            current.update({k: data.get(k) for k in ("exit_code", "signal", "signal_name", "status", "cause")
                            if data.get(k) is not None})
            if data.get("peaks"):
                self.peak_detail = data["peaks"]
            current["end"] = event.get("t")
            self.status = data.get("status", "unknown")

    def _meta(self, event: dict) -> None:
        self.meta.update(event["data"])

    def _config(self, event: dict) -> None:
        self.config.update(event["data"])

    def _checkpoint(self, event: dict) -> None:
        self.checkpoints += 1
        self.newest_checkpoint = {"path": event["data"].get("path"), "bytes": event["data"].get("bytes"),
                                  "step": event.get("step"), "epoch": event.get("epoch"), "t": event.get("t")}

    def _error(self, event: dict) -> None:
        self.errors_total += 1
        data = event["data"]
        if len(self.errors) < 100:
            self.errors.append({k: data.get(k) for k in
                                ("category", "phase", "cause", "error_message", "attempt", "step", "epoch")})

    def _warning(self, event: dict) -> None:
        category = event["data"].get("category") or "other"
        self.warnings[category] = self.warnings.get(category, 0) + 1

    def _system(self, event: dict) -> None:
        """Peaks, not samples: the highest memory of any window, the lowest headroom."""
        peaks = self.peaks
        for key, raw in event["data"].items():
            if raw.__class__ not in (int, float):
                continue
            if key in _PEAK_KEYS or (key.startswith("gpu") and key.endswith(("_max_mb", "_total_mb"))):
                name = _PEAK_KEYS.get(key, key)
                if raw > peaks.get(name, -1.0):
                    peaks[name] = raw
            elif key == "headroom_mb" and raw < peaks.get("headroom_min_mb", float("inf")):
                peaks["headroom_min_mb"] = raw

    def result(self) -> dict[str, Any]:
        by_category: dict[str, int] = {}
        for err in self.errors:
            cat = err.get("category") or "unknown"
            by_category[cat] = by_category.get(cat, 0) + 1
        duration = (self.last_t - self.first_t) if self.first_t is not None and self.last_t is not None else None
        return {
            "experiment": self.experiment,
            "status": self.status,
            "restarts": max(len(self.attempts) - 1, 0),
            "attempts": self.attempts,
            "started": self.first_t,
            "ended": self.last_t if self.status not in ("running", "unknown") else None,
            "duration_s": duration,
            "steps": self.max_step,
            "epochs": None if self.max_epoch is None else self.max_epoch + 1,
            "rows": self.rows,
            "metrics": {name: st.to_dict() for name, st in self.metrics.items()},
            "checkpoints": {"count": self.checkpoints, "newest": self.newest_checkpoint},
            "errors": {"count": self.errors_total, "by_category": by_category, "items": self.errors[-20:]},
            "warnings": {"count": sum(self.warnings.values()), "by_category": dict(self.warnings)},
            "resources": {"peaks": dict(self.peaks), "detail": self.peak_detail},
            "command": self.meta.get("argv"),
            "meta": self.meta,
            "config": self.config,
        }


_HANDLERS = {
    "attempt": SummaryBuilder._attempt,
    "meta": SummaryBuilder._meta,
    "config": SummaryBuilder._config,
    "checkpoint": SummaryBuilder._checkpoint,
    "error": SummaryBuilder._error,
    "warning": SummaryBuilder._warning,
    "system": SummaryBuilder._system,
}
