"""transformers.Trainer: the dict ``Trainer.log`` receives, at Trainer's global step, and its checkpoint directories.

- ``Trainer.log(logs)``: once it returns (Trainer has added ``epoch``), one metrics event at
  ``state.global_step`` with Trainer's own numbers: ``loss`` (the mean over the logging window, on the scale
  Trainer means, whatever the gradient accumulation), ``learning_rate``, ``grad_norm`` as ``gradient_norm``,
  every ``eval_*`` as ``validation_*`` (``eval_loss`` is ``validation_loss``: one series however many eval
  DataLoaders Trainer builds; with a dict of eval datasets, ``eval_<name>_loss`` is ``validation_loss/<name>``,
  known from the ``metric_key_prefix`` of the ``Trainer.evaluate`` in progress), the rest under Trainer's
  names; Trainer's fractional epoch is ``epoch_progress`` and the event's epoch is the one in progress (1.0,
  the end of the first, is still epoch 0).  ``trainer.evaluate()`` before any training is at step 0.
- ``Trainer.__init__``: from then on Trainer owns ``loss`` and the validation series (see ``frameworks``).
- ``Trainer._save_checkpoint``: one checkpoint, the ``checkpoint-N/`` directory (what Trainer resumes from),
  not one per file inside it.
- ``Trainer.train``: in an attempt tlog restarted from such a directory, ``resume_from_checkpoint`` is that
  directory unless the script passed one; Trainer's global step and epoch continue from it.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

from tlog import protocol
from tlog.hook.emitter import Emitter
from tlog.hook.frameworks import adapter

OWNED = frozenset({"loss"})
SRC = "transformers"


def metrics(logs: dict, prefix: str = "eval") -> dict:
    """Trainer's log dict under tlog's names; ``prefix`` is the ``metric_key_prefix`` of the ``evaluate`` in
    progress (``eval_<name>`` for each set of a dict of eval datasets: its ``eval_<name>_loss`` is
    ``validation_loss/<name>``)."""
    named = prefix + "_" if prefix.startswith("eval_") else None
    out: dict[str, Any] = {}
    for key, value in adapter.scalars(logs).items():
        if key == "epoch":
            out["epoch_progress"] = value
        elif key == "grad_norm":
            out["gradient_norm"] = value
        elif named is not None and key.startswith(named):
            out[f"validation_{key[len(named):]}/{prefix[5:]}"] = value
        elif key.startswith("eval_"):
            out["validation_" + key[5:]] = value
        else:
            out[key] = value
    return out


def epoch_index(progress: Any) -> int | None:
    """The epoch in progress at Trainer's fractional epoch (counted from 0; its end belongs to it)."""
    if not isinstance(progress, (int, float)) or not math.isfinite(progress) or progress < 0:
        return None
    return max(math.ceil(progress) - 1, 0)


def resume_target() -> str | None:
    """The checkpoint-N directory tlog restarted this attempt from, if it is one of Trainer's."""
    path = os.environ.get(protocol.ENV_RESUME_CHECKPOINT)
    if path and os.path.isfile(os.path.join(path, "trainer_state.json")):
        return path
    return None


def install(em: Emitter) -> None:
    from transformers.trainer import Trainer

    original_init, original_log = Trainer.__init__, Trainer.log
    original_save, original_train = Trainer._save_checkpoint, Trainer.train
    original_evaluate = Trainer.evaluate
    prefixes = ["eval"]  # the metric_key_prefix of each evaluate in progress, innermost last

    @functools.wraps(original_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        adapter.guard(em, "hf", adapter.take_over, OWNED)

    @functools.wraps(original_log)
    def log(self: Any, logs: dict, *args: Any, **kwargs: Any) -> None:
        original_log(self, logs, *args, **kwargs)
        adapter.guard(em, "hf", _record, em, self, logs, prefixes[-1])

    @functools.wraps(original_evaluate)
    def evaluate(self: Any, *args: Any, **kwargs: Any) -> Any:
        prefix = kwargs.get("metric_key_prefix", args[2] if len(args) > 2 else "eval")
        prefixes.append(prefix if isinstance(prefix, str) else "eval")
        try:
            return original_evaluate(self, *args, **kwargs)
        finally:
            prefixes.pop()

    @functools.wraps(original_save)
    def _save_checkpoint(self: Any, model: Any, trial: Any, *args: Any, **kwargs: Any) -> Any:
        target = adapter.guard(em, "hf", _checkpoint_dir, self, trial)
        save = functools.partial(original_save, self, model, trial, *args, **kwargs)
        return adapter.checkpoint(save, target) if isinstance(target, str) else save()

    @functools.wraps(original_train)
    def train(self: Any, resume_from_checkpoint: Any = None, *args: Any, **kwargs: Any) -> Any:
        if resume_from_checkpoint is None:
            resume_from_checkpoint = resume_target()
        return original_train(self, resume_from_checkpoint, *args, **kwargs)

    Trainer.__init__, Trainer.log = __init__, log
    Trainer._save_checkpoint, Trainer.train, Trainer.evaluate = _save_checkpoint, train, evaluate


def _record(em: Emitter, trainer: Any, logs: dict, prefix: str) -> None:
    data = metrics(logs, prefix)
    em.metrics(data, trainer.state.global_step, epoch_index(data.get("epoch_progress")), None, src=SRC)


def _checkpoint_dir(trainer: Any, trial: Any) -> str:
    """Where Trainer._save_checkpoint writes (its own formula: the run's output dir, checkpoint-<global step>)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    return os.path.join(trainer._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")

