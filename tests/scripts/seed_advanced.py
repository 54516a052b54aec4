"""The seed's "Configuration Options", "Advanced Usage" and "Real-time Monitoring" blocks as written.

Filled in: a tiny model whose forward keeps its ``output`` in the global the
seed's loop reads, fixed ``data``/``target``, ``calculate_accuracy`` and
``num_batches``.  Planted: a CUDA-style out-of-memory error on the 5th forward
and a gradient error on the 9th and 10th (the 9th is followed by another error,
not by a completed step).  The line starting with ``RESULT`` is for the test.
"""

# ruff: noqa: B007, BLE001 - the seed's blocks are kept as written

import json

import torch
from torch import nn

from tlog import ErrorCategory, TrainingLoggingManager, TrainingPhase

# Configure logger
logging_manager = TrainingLoggingManager(
    experiment_name="my_experiment",
    log_dir="custom_logs"
)

# Custom monitoring thresholds
logging_manager.logger.monitoring_thresholds = {
    'memory_usage_mb': 1000,
    'gpu_memory_mb': 8000,
    'check_interval_seconds': 30
}

# Configure progress tracker
logging_manager.progress_tracker.plot_config = {
    'figure_size': (15, 10),
    'dpi': 300,
    'save_format': 'png'
}

torch.manual_seed(0)
torch.set_num_threads(1)  # a 4-feature model gains nothing from threads; on a busy machine they cost
num_batches = 20
data = torch.randn(16, 4)
target = (data[:, :1] > 0).float()
FAILURES = {5: "CUDA out of memory. Tried to allocate 2.00 GiB",
            9: "gradient overflow: non-finite gradient norm", 10: "gradient overflow: non-finite gradient norm"}
output = None
printed_losses = []


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.calls = 0

    def forward(self, x):
        global output
        self.calls += 1
        if self.calls in FAILURES:
            raise RuntimeError(FAILURES[self.calls])
        output = self.layer(x)
        return output


def calculate_accuracy(output, target):
    return ((output > 0).float() == target).float().mean().item()


model = Net()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
criterion = nn.BCEWithLogitsLoss()


# Custom error handling
def custom_training_step(model, data, target, optimizer, criterion):
    try:
        # Forward pass
        output = model(data)
        loss = criterion(output, target)

        # Backward pass
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

        printed_losses.append(loss.item())
        return loss.item()

    except RuntimeError as e:
        if "out of memory" in str(e):
            # Handle memory error
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise e
        else:
            raise e

    except Exception as e:
        # Handle other errors
        raise e


# Use in training loop
for batch in range(num_batches):
    try:
        loss = custom_training_step(model, data, target, optimizer, criterion)

        metrics = {
            'loss': loss,
            'accuracy': calculate_accuracy(output, target),
            'learning_rate': optimizer.param_groups[0]['lr']
        }

        logging_manager.log_batch_metrics(metrics)

    except Exception as e:
        # Determine error category
        if "memory" in str(e).lower():
            category = ErrorCategory.MEMORY
        elif "gradient" in str(e).lower():
            category = ErrorCategory.GRADIENT_COMPUTATION
        else:
            category = ErrorCategory.UNKNOWN

        logging_manager.log_error(e, TrainingPhase.LOSS_COMPUTATION, category)

# Access real-time metrics
summary = logging_manager.progress_tracker.get_training_summary()
print(f"Current epoch: {summary['current_epoch']}")
print(f"Current loss: {summary['current_loss']:.4f}")
print(f"Best accuracy: {summary['best_accuracy']:.4f}")

# Get error statistics
error_summary = logging_manager.progress_tracker.get_error_summary()
print(f"Total errors: {error_summary['total_errors']}")
print(f"Recovery success rate: {error_summary['recovery_success_rate']:.2%}")

# Create visualizations
logging_manager.progress_tracker.create_training_plots()

print("RESULT", json.dumps({"summary": summary, "error_summary": error_summary, "losses": printed_losses,
                            "experiment_dir": str(logging_manager.logger.experiment_dir),
                            "monitoring_active": logging_manager.logger.monitoring_active}))
