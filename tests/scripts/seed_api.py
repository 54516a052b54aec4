"""The parts of the seed's API its usage examples leave out, without torch: validation, string enums,
a gradient recovery with a ``model``, ``TrainingLogger.log_error`` on its own, an odd config.
The line starting with ``RESULT`` is for the test."""

import json
from pathlib import Path

from tlog import ErrorCategory, RobustErrorHandler, TrainingLoggingManager, TrainingPhase


class Grad:
    zeroed = 0

    def zero_(self):
        Grad.zeroed += 1


class Param:
    def __init__(self, grad):
        self.grad = grad


class FakeModel:
    def parameters(self):
        return [Param(Grad()), Param(None), Param(Grad())]

    def __str__(self):
        return "FakeModel(\n  layers...\n)"


manager = TrainingLoggingManager("api")
manager.start_training({"lr": 0.1, "layers": [1, 2], "path": Path("/data/x"), 3: "an int key"})
manager.log_epoch_start(0, 1)
for batch in range(3):
    manager.log_batch_start(batch, 3)
    manager.log_batch_metrics({"loss": 1.0 - batch / 10, "accuracy": 0.5 + batch / 10})
    manager.log_batch_end()
manager.log_validation({"loss": 0.8, "val_acc": 0.6})
manager.log_validation({"val_loss": 0.9})
manager.log_error(ValueError("bad grads"), "backward_pass", "gradient_computation", model=FakeModel())
manager.logger.log_error(KeyError("shard-7"), TrainingPhase.DATA_LOADING, ErrorCategory.DATA_LOADING)
manager.log_epoch_end({"epoch_loss": 0.9})
manager.end_training()
metrics = manager.logger.metrics
print("RESULT", json.dumps({
    "experiment_dir": str(manager.logger.experiment_dir), "zeroed": Grad.zeroed,
    "validation": [metrics.validation_loss, metrics.validation_accuracy, metrics.patience_counter],
    "bests": [metrics.best_loss, metrics.best_accuracy],
    "handler": isinstance(manager.error_handler, RobustErrorHandler),
    "error_summary": manager.progress_tracker.get_error_summary(),
    "phases": [(p["phase"], p["event"]) for p in manager.logger.progress_history],
}))
