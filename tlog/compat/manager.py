"""The seed's TrainingLoggingManager (the lifecycle calls) and RobustErrorHandler (the recovery actions)."""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from tlog.compat.logger import TrainingLogger
from tlog.compat.tracker import TrainingProgressTracker
from tlog.compat.types import ErrorCategory, ErrorInfo, TrainingPhase


class RobustErrorHandler:
    """Recovery actions by error category, as the seed's manager ran them.

    An action returning True means it ran without failing, not that training
    recovered: the logger confirms that when a later step completes.  Where the
    seed's generic recovery slept for a second, this does nothing: waiting
    repairs nothing, and the next step is the test.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def attempt_recovery(self, error: BaseException, category: ErrorCategory, **kwargs: Any) -> bool:
        try:
            if category is ErrorCategory.MEMORY:
                gc.collect()
                _empty_cuda_cache()
            elif category is ErrorCategory.GRADIENT_COMPUTATION and "model" in kwargs:
                for param in kwargs["model"].parameters():
                    if param.grad is not None:
                        param.grad.zero_()
            # OPTIMIZATION: the step is skipped; any other category: nothing to undo
            return True
        except Exception as recovery_error:  # noqa: BLE001 - a failed recovery is recorded, not raised
            self.logger.error(f"Recovery failed: {recovery_error}")
            return False


def _empty_cuda_cache() -> None:
    """Release cached CUDA blocks, only if the script already uses CUDA (never imports or initialises it)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class TrainingLoggingManager:
    """The seed's high-level API.  Its experiment is ``log_dir/experiment_name`` under plain python
    (``log_dir`` defaults to ``TLOG_LOG_DIR`` or training_logs); under ``tlog run``, tlog's own."""

    def __init__(self, experiment_name: str | None = None, log_dir: str | os.PathLike | None = None) -> None:
        self.logger = TrainingLogger(log_dir, experiment_name)
        self.progress_tracker = TrainingProgressTracker(self.logger)
        self.error_handler = RobustErrorHandler(self.logger.logger)
        self.training_active = False
        self.current_epoch = 0
        self.current_batch = 0

    def start_training(self, config: Mapping[str, Any]) -> None:
        self.training_active = True
        self.logger.log_training_start(config)
        self.logger.logger.info("Training configuration:")
        for key, value in config.items():
            self.logger.logger.info(f"  {key}: {value}")

    def log_epoch_start(self, epoch: int, total_epochs: int) -> None:
        self.current_epoch = epoch
        self.logger.log_phase_start(TrainingPhase.EPOCH_START, epoch=epoch, total_epochs=total_epochs)
        self.progress_tracker.update_metrics({"epoch": epoch, "total_epochs": total_epochs})

    def log_batch_start(self, batch: int, total_batches: int) -> None:
        self.current_batch = batch
        self.logger.log_phase_start(TrainingPhase.BATCH_START, batch=batch, total_batches=total_batches)

    def log_batch_metrics(self, metrics: Mapping[str, Any]) -> None:
        """One step's metrics: a row of training_metrics.csv at the current epoch and batch."""
        recorded = self.logger.log_metrics({**metrics, "epoch": self.current_epoch, "batch": self.current_batch})
        self.progress_tracker.update_metrics(recorded)

    def log_batch_end(self) -> None:
        self.logger.log_phase_end(TrainingPhase.BATCH_END)

    def log_epoch_end(self, epoch_metrics: Mapping[str, Any]) -> None:
        self.logger.log_phase_end(TrainingPhase.EPOCH_END, **epoch_metrics)
        self.progress_tracker.update_metrics(epoch_metrics)

    def log_validation(self, validation_metrics: Mapping[str, Any]) -> None:
        recorded = self.logger.log_validation_results(validation_metrics)
        self.progress_tracker.update_metrics(recorded)

    def log_error(self, error: BaseException, phase: TrainingPhase,
                  category: ErrorCategory = ErrorCategory.UNKNOWN, **kwargs: Any) -> ErrorInfo:
        """Record the error first (so a recovery that kills the process loses nothing), then recover."""
        info = self.logger.log_error(error, phase, category, **kwargs)
        started = time.perf_counter()
        ran = self._attempt_error_recovery(error, info.category, **kwargs)
        self.logger.log_recovery_attempt(info, ran, time.perf_counter() - started)
        return info

    def _attempt_error_recovery(self, error: BaseException, category: ErrorCategory, **kwargs: Any) -> bool:
        return self.error_handler.attempt_recovery(error, category, **kwargs)

    def end_training(self, final_metrics: Mapping[str, Any] | None = None) -> None:
        """Final metrics on the last step's row; recoveries still unconfirmed are recorded as failed."""
        self.logger.log_training_end(final_metrics)
        if final_metrics:
            self.progress_tracker.update_metrics(final_metrics)
        self.training_active = False
