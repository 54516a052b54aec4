"""Lightning: what a LightningModule's ``self.log`` hands the loggers, at the trainer's global step; its checkpoints.

- ``_LoggerConnector.log_metrics(metrics)``: the dict Lightning gives every logger (CSVLogger's metrics.csv
  is written from it), so ``on_step``/``on_epoch`` mean what they mean in Lightning: ``train_loss_step`` and
  ``train_loss_epoch`` for a value logged on both, a step value only at the micro-batch that stepped the
  optimizer under ``accumulate_grad_batches``, epoch values at the epoch's last step.  Names are the
  module's own.  The step is ``trainer.global_step``, the optimizer steps made (the probe's step, and the
  ``step=N`` of ModelCheckpoint's file names); Lightning's loggers write it 0-based, so metrics.csv's
  ``step`` is one less.  The epoch is ``trainer.current_epoch``.  Read even when the trainer has no logger.
- ``Trainer.__init__``: from then on Lightning owns ``loss`` and the validation series (see ``frameworks``).
- ``Trainer.save_checkpoint`` (ModelCheckpoint's and the user's): one checkpoint, the ``.ckpt`` file
  (Lightning writes it through a buffer, which ``torch.save`` alone does not show as a file).
- ``Trainer.fit``: in an attempt tlog restarted from a ``.ckpt``, ``ckpt_path`` is that file unless the
  script passed one: Lightning restores the model, optimizers, loops and global step from it.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Any

from tlog import protocol
from tlog.hook.emitter import Emitter
from tlog.hook.frameworks import adapter

OWNED = frozenset({"loss"})
SRC = "lightning"


def resume_target() -> str | None:
    """The .ckpt tlog restarted this attempt from, if it is one."""
    path = os.environ.get(protocol.ENV_RESUME_CHECKPOINT)
    return path if path and path.endswith(".ckpt") and os.path.isfile(path) else None


def install(em: Emitter, package: str) -> None:
    Trainer = importlib.import_module(f"{package}.trainer.trainer").Trainer
    connector = importlib.import_module(f"{package}.trainer.connectors.logger_connector.logger_connector")
    Connector = connector._LoggerConnector
    original_init, original_fit, original_save = Trainer.__init__, Trainer.fit, Trainer.save_checkpoint
    original_log = Connector.log_metrics

    @functools.wraps(original_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        adapter.guard(em, SRC, adapter.take_over, OWNED)

    @functools.wraps(original_log)
    def log_metrics(self: Any, metrics: dict, step: int | None = None) -> None:
        original_log(self, metrics, step)
        adapter.guard(em, SRC, _record, em, self.trainer, metrics)

    @functools.wraps(original_save)
    def save_checkpoint(self: Any, filepath: Any, *args: Any, **kwargs: Any) -> Any:
        save = functools.partial(original_save, self, filepath, *args, **kwargs)
        return adapter.checkpoint(save, os.fspath(filepath))

    @functools.wraps(original_fit)
    def fit(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) < 5 and kwargs.get("ckpt_path") is None:  # ckpt_path is fit's fifth parameter
            target = resume_target()
            if target is not None:
                kwargs["ckpt_path"] = target
        return original_fit(self, *args, **kwargs)

    Trainer.__init__, Trainer.fit, Trainer.save_checkpoint = __init__, fit, save_checkpoint
    Connector.log_metrics = log_metrics


def _record(em: Emitter, trainer: Any, metrics: dict) -> None:
    """One metrics event of the logged values (tensors read as Lightning's loggers read them)."""
    if not metrics:
        return
    data = adapter.scalars({k: v.item() if hasattr(v, "item") and getattr(v, "numel", lambda: 0)() == 1 else v
                               for k, v in metrics.items()})
    data.pop("epoch", None)  # the event's own epoch
    data.pop("step", None)
    em.metrics(data, trainer.global_step, trainer.current_epoch, None, src=SRC)
