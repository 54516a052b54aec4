"""accelerate: the loss as ``Accelerator.backward`` receives it, gathered eval losses, ``save_state`` directories.

- ``Accelerator.backward(loss)``: accelerate divides ``loss`` by ``gradient_accumulation_steps`` (N) before its
  backward (DeepSpeed aside).  The probe holds a backward of ``x / N`` as ``x`` only when the step had N such
  backwards (``probes.accumulation``); here N is accelerate's own divisor, so the multiplication stands however
  many micro-batches the optimizer step gets (accelerate also steps at the end of the dataloader: 10
  micro-batches with N=4 are steps of 4, 4 and 2).  The step's loss is the mean of the losses the script gave
  ``backward``.  Step and learning rate are the probe's: the wrapped torch optimizer steps only when
  accelerate syncs gradients, and its param groups hold the lr the step used.
- ``DataLoaderShard`` / ``DataLoaderDispatcher`` iterate their base loader one batch ahead, so the base
  iterator is exhausted before the last batch is yielded: the probe's pass over such a loader is ended here,
  when the wrapper has yielded its last batch (``Side.owner``), and each yielded batch is a batch of the pass.
- ``Accelerator.gather_for_metrics`` / ``gather`` in a validation pass: a gathered tensor whose first value is
  the batch's loss (``loss``, ``loss.repeat(batch_size)``) is that batch's share of the eval loss; when every
  batch of the pass has one, the pass's ``validation_loss`` is the mean of all gathered values (what the script
  computes with ``torch.cat(losses).mean()``: a mean over samples, of every process), else the probe's mean.
- ``Accelerator.save_state``: one checkpoint, the directory (``output_dir``, or with
  ``automatic_checkpoint_naming`` ``<project_dir>/checkpoints/checkpoint_<i>``), not one per file in it.  A
  script resumes with ``accelerator.load_state(path)`` itself; ``tlog run --restart on-failure --resume-arg
  '--resume_from_checkpoint {checkpoint}'`` hands it the newest such directory.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from typing import Any

from tlog.hook.emitter import Emitter
from tlog.hook.frameworks import adapter

SRC = "accelerate"


def install(em: Emitter) -> None:
    from accelerate.accelerator import Accelerator  # type: ignore[import-untyped]

    original_backward, original_save = Accelerator.backward, Accelerator.save_state
    gathers = [0]  # gather calls in progress: gather_for_metrics calls gather

    @functools.wraps(original_backward)
    def backward(self: Any, loss: Any, **kwargs: Any) -> Any:
        probe = _probe()
        before = len(probe.rescaled) if probe is not None else 0
        result = original_backward(self, loss, **kwargs)
        if probe is not None:
            adapter.guard(em, SRC, _keep_rescaled, probe, before, self.gradient_accumulation_steps)
        return result

    @functools.wraps(original_save)
    def save_state(self: Any, output_dir: Any = None, *args: Any, **kwargs: Any) -> Any:
        target = adapter.guard(em, SRC, _state_dir, self, output_dir)
        save = functools.partial(original_save, self, output_dir, *args, **kwargs)
        return adapter.checkpoint(save, target) if isinstance(target, str) else save()

    def gathering(original: Any) -> Any:
        @functools.wraps(original)
        def gather(self: Any, data: Any, *args: Any, **kwargs: Any) -> Any:
            gathers[0] += 1
            try:
                result = original(self, data, *args, **kwargs)
            finally:
                gathers[0] -= 1
            if not gathers[0]:
                adapter.guard(em, SRC, _gathered, data, result)
            return result

        return gather

    def passing(original: Any) -> Any:
        @functools.wraps(original)
        def __iter__(self: Any) -> Any:
            owner = Pass(getattr(self, "base_dataloader", None))
            for batch in original(self):
                adapter.guard(em, SRC, owner.batch)
                yield batch
            adapter.guard(em, SRC, owner.end)

        return __iter__

    Accelerator.backward, Accelerator.save_state = backward, save_state
    Accelerator.gather_for_metrics = gathering(Accelerator.gather_for_metrics)
    Accelerator.gather = gathering(Accelerator.gather)
    data_loader = sys.modules["accelerate.data_loader"]  # imported by accelerate.accelerator
    for cls in (data_loader.DataLoaderShard, data_loader.DataLoaderDispatcher):
        cls.__iter__ = passing(cls.__iter__)


def _probe() -> Any:
    from tlog.hook import torch_probe

    return torch_probe.current()


def _keep_rescaled(probe: Any, before: int, divisor: int) -> None:
    """The backward just made was of accelerate's ``loss / divisor``: its value held times the divisor stands."""
    rescaled = probe.rescaled
    if len(rescaled) == before + 1 and abs(rescaled[-1][1] - divisor) <= 1e-6 * divisor:
        rescaled.pop()


def _state_dir(accelerator: Any, output_dir: Any) -> str | None:
    """Where ``save_state`` writes (accelerate's own formula), or None where it cannot write."""
    config = accelerator.project_configuration
    if config.automatic_checkpoint_naming:
        return os.path.join(accelerator.project_dir, "checkpoints", f"checkpoint_{config.iteration}")
    return os.fspath(output_dir) if output_dir is not None else None


class Pass:
    """One iteration of an accelerate loader: the probe's pass over its base loader, ended when it ends."""

    __slots__ = ("base", "gathered", "side")

    def __init__(self, base: Any) -> None:
        self.base = base  # the wrapped DataLoader: the probe's pass is over it
        self.side: Any = None
        self.gathered: dict[int, tuple[Any, Any]] = {}  # batch -> (first gathered value, gathered values)

    def batch(self) -> None:
        """A batch is about to be yielded (its base loader fetched the next one already)."""
        probe = _probe()
        side = probe.side if probe is not None else None
        if side is None:
            return
        if self.side is None and side.owner is None and side.loader() is self.base:
            self.side, side.owner = side, self
        if side is self.side:
            side.taken = False  # its first loss is this batch's, whatever the prefetch did

    def end(self) -> None:
        probe = _probe()
        if probe is not None and self.side is not None and probe.side is self.side and probe.loaders is not None:
            probe.loaders.end_side()

    def value(self, losses: list[float]) -> float | None:
        """The mean of the gathered values when every batch gathered its loss, else None."""
        if len(self.gathered) != len(losses):
            return None
        import torch

        from tlog.hook.probes.window import numbers

        firsts = numbers([self.gathered[i][0] for i in range(len(losses))])
        if not all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(firsts, losses, strict=True)):
            return None
        values = torch.cat([self.gathered[i][1].reshape(-1) for i in range(len(losses))])
        return float(values.mean())


def _gathered(data: Any, result: Any) -> None:
    """A tensor gathered during a pass this module ends: held as the batch's eval loss if it may be one."""
    probe = _probe()
    side = probe.side if probe is not None else None
    if side is None or not isinstance(side.owner, Pass) or not side.taken or not side.losses:
        return
    owner = side.owner
    batch = len(side.losses) - 1
    import torch

    if batch in owner.gathered or not isinstance(data, torch.Tensor) or not isinstance(result, torch.Tensor):
        return
    if not data.is_floating_point() or not data.numel():
        return
    from tlog.hook.probes.window import hold

    owner.gathered[batch] = (hold(data.detach().reshape(-1)[0]), result.detach())
