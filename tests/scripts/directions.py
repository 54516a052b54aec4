"""Metrics whose best is their minimum (val_mse, wer, train/nll), maximum (accuracy, top1_acc) or undefined
(beta1, lr, a name tlog cannot know), each taking the values 0.5, 0.2, 0.9, 0.4 at steps 1-4."""

import tlog

tlog.config({"optimizer": "adam"})
for step, value in enumerate([0.5, 0.2, 0.9, 0.4], start=1):
    tlog.log({"val_mse": value, "wer": value, "train/nll": value, "accuracy": value, "top1_acc": value,
              "beta1": value, "lr": value, "widgets": value}, step=step)
