"""The seed's TrainingLogger on tlog's pipeline: each call becomes events, the store writes the files.

What differs from the seed, on purpose:

- No file of its own: metrics, phases, config and errors are events through
  ``tlog.hook.emitter`` (the wire under ``tlog run``, the store under plain
  python), so training_metrics.csv & co. are tlog's, row per step.
- Bounded memory: ``error_history`` and ``progress_history`` are windows
  (``HISTORY_WINDOW``); ``error_stats`` keeps the exact whole-run counts.
  Batch start/end only move the loop position (no event, no history entry):
  the position travels on every event.
- Values are numbers when logged: a tensor given here is read once (the
  seed's summaries and console lines need the number); the seed's examples
  pass ``.item()``.  ``tlog.log`` is the API that defers device reads.
- Honest recovery: ``log_recovery_attempt`` records that a recovery action ran;
  the error's ``recovery_successful`` stays None until a step completes after
  it (the next ``log_metrics``, or a ``BATCH_END`` of a batch begun after the
  error), then becomes True; another error first, or the end of training,
  makes it False.  Each change is an ``error`` event with ``update_of`` that
  the store merges into the record in training_errors.json.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from tlog import protocol
from tlog.compat.monitor import DEFAULT_THRESHOLDS, ThresholdMonitor
from tlog.compat.pipeline import StoreLogHandler, connect, probe_step
from tlog.compat.types import (
    METRIC_FIELDS,
    ErrorCategory,
    ErrorInfo,
    ErrorStats,
    TrainingMetrics,
    TrainingPhase,
    coerce,
    enum_value,
    jsonable,
)
from tlog.hook.crash import crash_payload
from tlog.hook.emitter import _scalar

HISTORY_WINDOW = 1000
LOG_FORMAT = "%(levelname)s - %(message)s"
_POSITION = frozenset({"epoch", "batch", "step"})
_QUIET_PHASES = frozenset({TrainingPhase.BATCH_START, TrainingPhase.BATCH_END})
_VALIDATION_NAMES = {"loss": "validation_loss", "accuracy": "validation_accuracy", "val_loss": "validation_loss",
                     "val_accuracy": "validation_accuracy", "val_acc": "validation_accuracy"}


def _number(value: Any) -> Any:
    """A metric value as the wire carries it (a tensor read once here, not again by the emitter)."""
    cls = value.__class__
    return value if cls is float or cls is int or cls is str or value is None else _scalar(value)


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)


class TrainingLogger:
    def __init__(self, log_dir: str | os.PathLike | None = None, experiment_name: str | None = None) -> None:
        fallback = os.environ.get(protocol.ENV_NAME) or f"experiment_{int(time.time())}"
        self.sink = connect(experiment_name, log_dir, fallback)
        self.em = self.sink.em
        self.experiment_dir = self.sink.exp_dir
        self.experiment_name = self.experiment_dir.name
        self.log_dir = self.experiment_dir.parent
        self.logger = self._setup_logger()
        self.metrics = TrainingMetrics()
        self.error_history: deque[ErrorInfo] = deque(maxlen=HISTORY_WINDOW)
        self.error_stats = ErrorStats()
        self.progress_history: deque[dict[str, Any]] = deque(maxlen=HISTORY_WINDOW)
        self.start_time = time.time()
        self.epoch_start_time = self.batch_start_time = self.start_time
        self.step: int | None = None
        self._row: tuple[int | None, Any, Any] = (None, None, None)  # step, epoch, batch of the newest row
        self._pending: list[list] = []  # [ErrorInfo, a batch began after it]
        self._best_val: float | None = None
        self._errors = 0
        self._alarms: list[tuple[str, str]] = []
        self._monitoring_thresholds = dict(DEFAULT_THRESHOLDS)
        self.monitor = ThresholdMonitor(lambda: self._monitoring_thresholds, self._on_reading, self._on_alarm)
        self.monitor.start()

    # -- set-up ---------------------------------------------------------------------------
    def _setup_logger(self) -> logging.Logger:
        """A stdlib logger: console (stderr, which ``tlog run`` records in training.log) or, without a
        supervisor, stderr and training.log through the store."""
        logger = logging.getLogger(f"tlog.compat.{self.experiment_name}")
        logger.setLevel(logging.INFO)
        logger.propagate = False
        for handler in [h for h in logger.handlers if getattr(h, "_tlog_compat", False)]:
            logger.removeHandler(handler)
        handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
        if not self.sink.supervised:
            handlers.append(StoreLogHandler(self.em))
        for handler in handlers:
            handler._tlog_compat = True  # type: ignore[attr-defined]
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
            logger.addHandler(handler)
        return logger

    @property
    def monitoring_thresholds(self) -> dict[str, Any]:
        """memory_usage_mb, gpu_memory_mb, check_interval_seconds; a new dict takes effect at once."""
        return self._monitoring_thresholds

    @monitoring_thresholds.setter
    def monitoring_thresholds(self, value: Mapping[str, Any]) -> None:
        self._monitoring_thresholds = dict(value)
        self.monitor.poke()

    @property
    def monitoring_active(self) -> bool:
        return self.monitor.active

    def current_step(self) -> int | None:
        """The step the next non-batch event belongs to: the probe's when it counts, else this logger's."""
        return probe_step() or self.step

    # -- lifecycle ------------------------------------------------------------------------
    def log_training_start(self, config: Mapping[str, Any]) -> None:
        self.start_time = time.time()
        self.em.emit("config", jsonable(dict(config)))
        self._phase_event(TrainingPhase.TRAINING_START, "start", {})
        self.monitor.start()
        self.logger.info(f"Training started: {self.experiment_name} ({self.experiment_dir})")

    def log_training_end(self, final_metrics: Mapping[str, Any] | None = None) -> None:
        values = self._record(final_metrics or {})
        duration = time.time() - self.start_time
        self._resolve_pending(False, "training ended before a step completed after the error")
        self._phase_event(TrainingPhase.TRAINING_END, "end", {"training_time": round(duration, 3), **values})
        self.monitor.stop()
        self.logger.info(f"Training completed in {duration:.2f}s"
                         + "".join(f", {k}: {_fmt(v)}" for k, v in values.items()))

    def start_monitoring(self) -> None:
        self.monitor.start()

    def stop_monitoring(self) -> None:
        self.monitor.stop()

    # -- phases ---------------------------------------------------------------------------
    def log_phase_start(self, phase: TrainingPhase, **kwargs: Any) -> None:
        """Enter a phase; a crash from now on names it.  Batch starts only move the position."""
        m, em = self.metrics, self.em
        em.phase = enum_value(phase)
        if phase is TrainingPhase.BATCH_START:
            self.batch_start_time = time.time()
            m.batch = em.batch = kwargs.get("batch", 0)
            m.total_batches = kwargs.get("total_batches", 0)
            for entry in self._pending:
                entry[1] = True
            return
        if phase is TrainingPhase.EPOCH_START:
            self.epoch_start_time = time.time()
            m.epoch = em.epoch = kwargs.get("epoch", 0)
            self.logger.info(f"Epoch {m.epoch} started")
        self._phase_event(phase, "start", kwargs)

    def log_phase_end(self, phase: TrainingPhase, **kwargs: Any) -> None:
        """Leave a phase; a batch end confirms recoveries of errors from before that batch began."""
        self.em.phase = enum_value(phase)
        if phase is TrainingPhase.BATCH_END:
            if self._pending:
                self._confirm(armed_only=True, how="a batch begun after the error ended")
            return
        if phase is TrainingPhase.EPOCH_END:
            values = self._record(kwargs)
            took = time.time() - self.epoch_start_time
            kwargs = {"epoch_time": round(took, 3), **kwargs}
            self.logger.info(f"Epoch {self.metrics.epoch} completed in {took:.2f}s"
                             + "".join(f", {k}: {_fmt(v)}" for k, v in values.items()))
        self._phase_event(phase, "end", kwargs)

    def _phase_event(self, phase: TrainingPhase, edge: str, data: Mapping[str, Any]) -> None:
        entry = {"phase": enum_value(phase), "event": edge, **jsonable(dict(data))}
        self.progress_history.append({**entry, "timestamp": datetime.now().isoformat(),
                                      "epoch": self.metrics.epoch, "batch": self.metrics.batch})
        em = self.em
        em.emit("phase", entry, step=self.current_step(), epoch=em.epoch, batch=em.batch)
        if self._alarms:
            self._flush_alarms()

    # -- metrics --------------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """One step's metrics (a new row); returns them as recorded, position included."""
        m = self.metrics
        values: dict[str, Any] = {}
        for key, raw in metrics.items():
            value = _number(raw)
            if key in METRIC_FIELDS:
                setattr(m, key, value)
            if key not in _POSITION:
                values[str(key)] = value
        self._bests(values)
        m.training_time = time.time() - self.start_time
        step = self._next_step()
        if m.total_batches and "total_batches" not in values:
            values["total_batches"] = m.total_batches
        self.em.metrics(values, step, m.epoch, m.batch)
        self._row = (step, m.epoch, m.batch)
        if self._alarms:
            self._flush_alarms()
        if isinstance(m.batch, int) and m.batch % 10 == 0:
            self.logger.info(f"Epoch {m.epoch}, Batch {m.batch}/{m.total_batches}, Loss: {_fmt(m.loss)}, "
                             f"Accuracy: {_fmt(m.accuracy)}, LR: {_fmt(m.learning_rate, 6)}")
        if self._pending:
            self._confirm(armed_only=False, how="a step logged its metrics")
        return {**values, "epoch": m.epoch, "batch": m.batch}

    def log_validation_results(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Validation values at the current step (``loss``/``val_loss`` are recorded as validation_loss)."""
        values = {_VALIDATION_NAMES.get(k, k): _number(v) for k, v in metrics.items()}
        m = self.metrics
        for key in ("validation_loss", "validation_accuracy"):
            if isinstance(values.get(key), (int, float)):
                setattr(m, key, values[key])
        val = values.get("validation_loss")
        if isinstance(val, (int, float)) and val == val:  # noqa: PLR0124 - NaN never improves
            if self._best_val is None or val < self._best_val:
                self._best_val, m.patience_counter = val, 0
            else:
                m.patience_counter += 1
        self._record(values)
        self._phase_event(TrainingPhase.VALIDATION, "end", {})
        self.logger.info("Validation: " + ", ".join(f"{k}: {_fmt(v)}" for k, v in values.items()))
        return values

    def _record(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Values that belong to the current step's row (epoch end, validation, final): no new step,
        and the row keeps its own epoch and batch (a failed batch after it does not move them)."""
        values = {str(k): _number(v) for k, v in metrics.items() if k not in _POSITION}
        numbers = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        if numbers:
            step, em = self.current_step(), self.em
            epoch, batch = self._row[1:] if self._row[0] == step else (em.epoch, em.batch)
            em.metrics(numbers, step, epoch, batch)
        return values

    def _next_step(self) -> int:
        """A new row: the probe's optimizer step when it counts, else one more than this logger's last."""
        step = probe_step()
        if step is None:
            step = self.em.step = (self.step or 0) + 1
        self.step = step
        return step

    def _bests(self, values: Mapping[str, Any]) -> None:
        m = self.metrics
        loss, acc = values.get("loss"), values.get("accuracy")
        if isinstance(loss, (int, float)) and loss < m.best_loss:
            m.best_loss = loss
        if isinstance(acc, (int, float)) and acc > m.best_accuracy:
            m.best_accuracy = acc

    # -- errors ---------------------------------------------------------------------------
    def log_error(self, error: BaseException, phase: TrainingPhase,
                  category: ErrorCategory = ErrorCategory.UNKNOWN, **kwargs: Any) -> ErrorInfo:
        """Record a handled error as an ``error`` event (training_errors.json, ``tlog errors``)."""
        m, em = self.metrics, self.em
        phase, category = coerce(TrainingPhase, phase), coerce(ErrorCategory, category)
        payload = crash_payload(error, enum_value(phase))
        self._errors += 1
        info = ErrorInfo(category=category, phase=phase, error_message=str(error), traceback=payload["traceback"],
                         timestamp=datetime.now(), epoch=m.epoch, batch=m.batch, context_data=kwargs,
                         id=f"log-{os.getpid()}-{self._errors}", step=self.current_step(),
                         error_type=payload["type"])
        self._resolve_pending(False, "another error came before a step completed")
        self.error_history.append(info)
        self.error_stats.add(info)
        record = {**info.to_dict(), "attempt": self.sink.attempt, "chain": payload["chain"]}
        em.emit("error", record, step=info.step, epoch=em.epoch, batch=em.batch)
        log = self.logger
        log.error(f"Error in {enum_value(phase)}: {error}")
        log.error(f"Category: {enum_value(category)}")
        log.error(f"Epoch: {m.epoch}, Batch: {m.batch}")
        log.error(f"Traceback: {info.traceback.rstrip()}")
        return info

    def log_recovery_attempt(self, error_info: ErrorInfo, recovery_successful: bool, recovery_time: float) -> None:
        """The recovery action for ``error_info`` ran; ``recovery_successful``: it completed without failing.

        That alone proves nothing: the record stays pending (None) until a step
        completes after the error, and ``recovery_time`` is then the time from
        the error to that step.  The action's own duration is ``recovery_action_time``.
        """
        error_info.recovery_attempted = True
        self.error_stats.attempted += 1
        action = {"recovery_attempted": True, "recovery_action_time": round(recovery_time, 6)}
        if recovery_successful:
            error_info.recovery_successful = None
            self._pending.append([error_info, False])
            self._update(error_info, {**action, "recovery_successful": None})
            self.logger.info(f"Recovery action for {enum_value(error_info.category)} error done in "
                             f"{recovery_time:.3f}s; waiting for a step to complete")
        else:
            error_info.recovery_successful = False
            self._update(error_info, {**action, "recovery_successful": False, "recovery_note": "the action failed"})
            self.logger.warning(f"Recovery from {enum_value(error_info.category)} error failed")

    def _confirm(self, armed_only: bool, how: str) -> None:
        keep = []
        for entry in self._pending:
            if armed_only and not entry[1]:
                keep.append(entry)
            else:
                self._finish_recovery(entry[0], True, how)
        self._pending = keep

    def _resolve_pending(self, successful: bool, how: str) -> None:
        pending, self._pending = self._pending, []
        for info, _ in pending:
            self._finish_recovery(info, successful, how)

    def _finish_recovery(self, info: ErrorInfo, successful: bool, how: str) -> None:
        info.recovery_successful = successful
        info.recovery_time = round(time.time() - info.timestamp.timestamp(), 3) if successful else None
        if successful:
            self.error_stats.successful += 1
        self._update(info, {"recovery_attempted": True, "recovery_successful": successful,
                            "recovery_time": info.recovery_time, "recovery_note": how,
                            "recovered_at_step": self.current_step() if successful else None})
        level = logging.INFO if successful else logging.WARNING
        self.logger.log(level, f"Recovery from {enum_value(info.category)} error "
                               f"{'succeeded' if successful else 'failed'}: {how}")

    def _update(self, info: ErrorInfo, fields: dict[str, Any]) -> None:
        em = self.em
        em.emit("error", {"update_of": info.id, **fields}, step=self.current_step(), epoch=em.epoch, batch=em.batch)

    # -- resources ------------------------------------------------------------------------
    def _on_reading(self, rss_mb: float, gpu_mb: float | None) -> None:
        self.metrics.memory_usage = rss_mb
        self.metrics.gpu_memory = gpu_mb or 0.0
        if not self.sink.supervised:  # no supervisor samples resources: this reading fills the memory columns
            sample = {"rss_mb": round(rss_mb, 3), "nprocs": 1}
            if gpu_mb is not None:
                sample["gpu0_used_mb"] = round(gpu_mb, 3)
            self.em.emit("system", sample)

    def _on_alarm(self, key: str, message: str) -> None:
        """From the monitor thread: the log line at once; the warning event at once without a supervisor
        (the store has a lock), else from the training thread's next call, so that two threads never
        write one pipe at the same time (a long event could interleave with a short one)."""
        self.logger.warning(message)
        warning = (message, "device" if key == "gpu" else "memory" if key == "memory" else "system")
        if self.sink.supervised:
            self._alarms.append(warning)
        else:
            self.em.warn(*warning)

    def _flush_alarms(self) -> None:
        alarms, self._alarms = self._alarms, []
        for message, category in alarms:
            self.em.warn(message, category)
