"""Values JSON cannot hold, through every way a script records (argparse, tlog.config, tlog.log, the seed's
TrainingLoggingManager); logs loss at steps 1-5 after them.  Usage: odd_values.py [--seed N]."""

import argparse

import tlog
from tlog import TrainingLoggingManager


class Opaque:
    def __str__(self) -> str:
        raise RuntimeError("no text")


p = argparse.ArgumentParser()
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()
tlog.config({"huge": 1 << 70, float("nan"): "nan key", (1, 2): "tuple key", "opaque": Opaque(),
             "nested": {"deep": [1 << 80, float("inf")]}})
for step in range(1, 6):
    tlog.log({"loss": 1.0 / step, "count": 1 << 90}, step=step)
manager = TrainingLoggingManager("odd")
manager.start_training({"api_seed": 1 << 70})
manager.log_epoch_start(0, 1)
manager.log_batch_metrics({"api_big": 1 << 100})
manager.log_epoch_end({})
print("trained", args.seed)
