"""PyTorch instrumentation, installed only once the script has imported torch.

Each capability is a ``Patch``: ``install`` wires it into torch and returns
the function that undoes it.  A patch that fails to install, or whose wrapper
raises later, reports one warning and switches itself off; the original torch
function keeps running, so training never stops because of tlog.

The probe keeps the loop position (step, epoch, batch, phase) in plain
attributes of the emitter, so ``tlog.log`` and the crash hook see it for free.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch

from tlog.hook.emitter import Emitter

Undo = Callable[[], None]


class Probe:
    """State shared by the patches: the loss accumulator and the training loader."""

    def __init__(self, em: Emitter) -> None:
        self.em = em
        self.step = 0
        self.loss_sum: Any = None
        self.loss_n = 0
        self.train_loader: Any = None
        self.last_loader: Any = None
        self.iters: dict[int, int] = {}
        self.total_batches: int | None = None
        self.undo: list[Undo] = []
        self.broken: set[str] = set()

    def fail(self, name: str, exc: BaseException) -> None:
        """Switch a patch off after its first failure, and say so once."""
        if name in self.broken:
            return
        self.broken.add(name)
        self.em.warn_once(f"probe-{name}", f"tlog probe '{name}' disabled after an error: {exc!r}")

    # -- loss ---------------------------------------------------------------------------
    def on_backward(self, tensor: Any) -> None:
        """Accumulate a scalar loss on its device; it is read once per report."""
        if "backward" in self.broken or not isinstance(tensor, torch.Tensor) or tensor.numel() != 1:
            return
        try:
            loss = tensor.detach()
            self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
            self.loss_n += 1
            if self.last_loader is not None and self.train_loader is None:
                self.train_loader = self.last_loader
                self.em.epoch = self.iters.get(id(self.last_loader), 1) - 1
            self.em.phase = "backward_pass"
        except Exception as exc:  # noqa: BLE001
            self.fail("backward", exc)

    # -- optimizer step ---------------------------------------------------------------
    def on_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if "step" in self.broken:
            return
        try:
            self.step += 1
            em = self.em
            em.step = self.step
            data: dict[str, Any] = {}
            if self.loss_n:
                data["loss"] = float(self.loss_sum) / self.loss_n
                self.loss_sum, self.loss_n = None, 0
            groups = optimizer.param_groups
            if groups and "lr" in groups[0]:
                data["learning_rate"] = float(groups[0]["lr"])
            if self.total_batches is not None:
                data["total_batches"] = self.total_batches
            em.metrics(data, None, None, None, src="auto")
        except Exception as exc:  # noqa: BLE001
            self.fail("step", exc)

    # -- data loading -----------------------------------------------------------------
    def on_new_iterator(self, loader: Any) -> None:
        """A fresh iterator over the training loader starts a new epoch."""
        key = id(loader)
        self.iters[key] = self.iters.get(key, 0) + 1
        if loader is self.train_loader or self.train_loader is None:
            self.em.epoch = self.iters[key] - 1
            try:
                self.total_batches = len(loader)
            except TypeError:
                self.total_batches = None

    def on_batch(self, loader: Any, index: int) -> None:
        self.last_loader = loader
        if loader is self.train_loader or self.train_loader is None:
            self.em.batch = index
        self.em.phase = "forward_pass"

    # -- checkpoints ------------------------------------------------------------------
    def on_saved(self, f: Any) -> None:
        path = _path_of(f)
        if path is None:
            return
        try:
            size = os.path.getsize(path)
        except OSError:
            size = None
        em = self.em
        em.emit("checkpoint", {"path": os.path.abspath(path), "bytes": size},
                step=em.step, epoch=em.epoch, batch=em.batch)


def _path_of(f: Any) -> str | None:
    if isinstance(f, (str, os.PathLike)):
        return os.fspath(f)
    name = getattr(f, "name", None)
    return name if isinstance(name, str) else None


def patch_optimizer(probe: Probe) -> Undo:
    """Torch's global step hook sees every optimizer, closures and LBFGS included."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(probe.on_step)
    return handle.remove


def patch_backward(probe: Probe) -> Undo:
    tensor_backward = torch.Tensor.backward
    autograd_backward = torch.autograd.backward
    inside = [False]

    @functools.wraps(tensor_backward)
    def backward(self: Any, *args: Any, **kwargs: Any) -> Any:
        probe.on_backward(self)
        inside[0] = True
        try:
            return tensor_backward(self, *args, **kwargs)
        finally:
            inside[0] = False

    @functools.wraps(autograd_backward)
    def autograd(tensors: Any, *args: Any, **kwargs: Any) -> Any:
        if not inside[0]:
            probe.on_backward(tensors)
        return autograd_backward(tensors, *args, **kwargs)

    torch.Tensor.backward = backward
    torch.autograd.backward = autograd

    def undo() -> None:
        torch.Tensor.backward = tensor_backward
        torch.autograd.backward = autograd_backward

    return undo


def patch_dataloader(probe: Probe) -> Undo:
    from torch.utils.data import DataLoader
    from torch.utils.data.dataloader import _BaseDataLoaderIter

    original_iter = DataLoader.__iter__
    original_next = _BaseDataLoaderIter.__next__

    @functools.wraps(original_iter)
    def __iter__(loader: Any) -> Any:
        it = original_iter(loader)
        try:
            it._tlog_loader = loader
            probe.on_new_iterator(loader)
        except Exception as exc:  # noqa: BLE001
            probe.fail("dataloader", exc)
        return it

    @functools.wraps(original_next)
    def __next__(it: Any) -> Any:
        probe.em.phase = "data_loading"
        batch = original_next(it)
        loader = getattr(it, "_tlog_loader", None)
        if loader is not None:
            probe.on_batch(loader, it._num_yielded - 1)
        return batch

    DataLoader.__iter__ = __iter__
    _BaseDataLoaderIter.__next__ = __next__

    def undo() -> None:
        DataLoader.__iter__ = original_iter
        _BaseDataLoaderIter.__next__ = original_next

    return undo


def patch_save(probe: Probe) -> Undo:
    original = torch.save

    @functools.wraps(original)
    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
        em = probe.em
        previous, em.phase = em.phase, "checkpoint_saving"
        result = original(obj, f, *args, **kwargs)
        try:
            probe.on_saved(f)
        except Exception as exc:  # noqa: BLE001
            probe.fail("save", exc)
        em.phase = previous
        return result

    torch.save = save
    torch.serialization.save = save

    def undo() -> None:
        torch.save = original
        torch.serialization.save = original

    return undo


PATCHES: tuple[tuple[str, Callable[[Probe], Undo]], ...] = (
    ("optimizer", patch_optimizer),
    ("backward", patch_backward),
    ("dataloader", patch_dataloader),
    ("save", patch_save),
)

_probe: Probe | None = None


def install(em: Emitter) -> Probe:
    """Install every patch that this torch supports; idempotent."""
    global _probe
    if _probe is not None:
        return _probe
    probe = Probe(em)
    for name, patch in PATCHES:
        try:
            probe.undo.append(patch(probe))
        except Exception as exc:  # noqa: BLE001 - an unexpected torch: this patch stays off
            probe.fail(name, exc)
    em.emit("meta", {"torch": torch.__version__, "cuda": torch.version.cuda,
                     "probes": [name for name, _ in PATCHES if name not in probe.broken]})
    _probe = probe
    return probe
