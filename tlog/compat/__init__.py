"""The seed's Python API (TrainingLoggingManager & co.) on tlog's own pipeline.

Every call becomes events through ``tlog.hook.emitter``: on the wire under
``tlog run`` (the supervisor writes the files), into the experiment directory
through the store under plain ``python``.  The files are therefore tlog's:
training_metrics.csv one row per step in the seed's columns, the config in
training_config.json, logged errors in training_errors.json and ``tlog errors``.

This runs in the training process: standard library only at import; torch is
used only if the script has imported it, matplotlib only inside
``create_training_plots``.  See ``logger`` for what differs from the seed on
purpose (bounded memory, recovery confirmed by the next step, no sleeping).
"""

from tlog.compat.logger import TrainingLogger
from tlog.compat.manager import RobustErrorHandler, TrainingLoggingManager
from tlog.compat.tracker import TrainingProgressTracker
from tlog.compat.types import ErrorCategory, ErrorInfo, TrainingMetrics, TrainingPhase

__all__ = [
    "ErrorCategory", "ErrorInfo", "RobustErrorHandler", "TrainingLogger", "TrainingLoggingManager",
    "TrainingMetrics", "TrainingPhase", "TrainingProgressTracker",
]
