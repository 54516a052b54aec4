"""The seed's "Basic Usage" block as written, then its "Real-time Monitoring" snippet.

The names the seed leaves undefined are filled in by a tiny model trained on a
fixed batch (``loss``, ``accuracy``, ``optimizer``, ``epoch_loss``, ``final_loss``);
its "Your training code here" is one call to ``train_step``.  Two failures are
planted: a non-finite loss at epoch 3 batch 50 (the next batch succeeds) and at
the very last batch (no step follows it).  A low memory threshold shows the
monitor's warning, and a small plot_config keeps the PNG small.  The lines
starting with ``RESULT`` are for the test.
"""

# ruff: noqa: BLE001 - the seed's blocks are kept as written

import json

import torch
from torch import nn

from tlog import ErrorCategory, TrainingLoggingManager, TrainingPhase

torch.manual_seed(0)
torch.set_num_threads(1)  # a 4-feature model gains nothing from threads; on a busy machine they cost
features = torch.randn(32, 4)
labels = (features[:, 0] > 0).long()
model = nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.001)
criterion = nn.CrossEntropyLoss()
PLANTED = {(3, 50), (9, 99)}
printed_losses = []
epoch_losses = {}
epoch_loss = final_loss = None


def train_step(epoch, batch):
    global epoch_loss, final_loss
    optimizer.zero_grad()
    output = model(features)
    loss = criterion(output, labels)
    if (epoch, batch) in PLANTED:
        raise FloatingPointError(f"non-finite loss at epoch {epoch} batch {batch}")
    loss.backward()
    optimizer.step()
    this_epoch = epoch_losses.setdefault(epoch, [])
    this_epoch.append(loss.item())
    epoch_loss = sum(this_epoch) / len(this_epoch)
    final_loss = loss.item()
    printed_losses.append([epoch, batch, loss.item()])
    return loss, (output.argmax(1) == labels).float().mean()


# Create logging manager
logging_manager = TrainingLoggingManager("my_experiment")
logging_manager.logger.monitoring_thresholds = {
    'memory_usage_mb': 1,
    'gpu_memory_mb': 8000,
    'check_interval_seconds': 0.2
}
logging_manager.progress_tracker.plot_config = {
    'figure_size': (8, 5),
    'dpi': 40,
    'save_format': 'png'
}

# Start training
config = {
    'model_type': 'neural_network',
    'learning_rate': 0.001,
    'batch_size': 32,
    'epochs': 10
}
logging_manager.start_training(config)

# Training loop
for epoch in range(10):
    logging_manager.log_epoch_start(epoch, 10)

    for batch in range(100):
        logging_manager.log_batch_start(batch, 100)

        # Training step
        try:
            loss, accuracy = train_step(epoch, batch)
            batch_metrics = {
                'loss': loss.item(),
                'accuracy': accuracy.item(),
                'learning_rate': optimizer.param_groups[0]['lr']
            }
            logging_manager.log_batch_metrics(batch_metrics)

        except Exception as e:
            logging_manager.log_error(e, TrainingPhase.LOSS_COMPUTATION, ErrorCategory.LOSS_COMPUTATION)

        logging_manager.log_batch_end()

    logging_manager.log_epoch_end({'epoch_loss': epoch_loss})

# End training
logging_manager.end_training({'final_loss': final_loss})

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
                            "epoch_loss": epoch_loss, "final_loss": final_loss,
                            "experiment_dir": str(logging_manager.logger.experiment_dir),
                            "history": len(logging_manager.progress_tracker.metrics_history)}))
