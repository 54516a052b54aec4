"""DataLoader iteration: epochs, batches, samples, and which passes are validation.

- The training loader is the one that yielded the latest batch when a
  backward ran.  A new iterator over it is a new epoch (counted from 0);
  ``len(loader)`` is ``total_batches``.  Its batches are not watched one by
  one (that would cost every step a call): the batch index is the iterator's
  own count, read at each backward (and at a crash: see ``Probe.train_vars``), and the epoch's last batch is known by
  that count reaching ``len(loader)``.
- A pass over any other loader is a *side pass*.  The first loss computed on
  each of its batches is a validation loss, unless a backward during the pass
  shows that it was training after all (the very first epoch, before its
  first backward).  A pass started with grad disabled or with the model in
  eval mode is announced as validation at once (a ``phase`` event).  Its
  mean over batches is emitted as ``validation_loss`` when the pass is
  exhausted or the next training pass starts, onto the row of the last
  training step; further loaders get ``validation_loss/2``, ...  Batches
  are watched (``DataLoader`` iterators' ``__next__`` patched) only while
  such a pass is open.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import torch
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _BaseDataLoaderIter

from tlog.hook.live import BATCH, EPOCH, UNSET
from tlog.hook.probes.state import Probe, Undo
from tlog.hook.probes.window import hold, numbers


def batch_len(batch: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor (tuples, lists, dicts looked into)."""
    for _ in range(4):
        shape = getattr(batch, "shape", None)
        if shape is not None:
            return int(shape[0]) if len(shape) else 1
        if isinstance(batch, (list, tuple)) and batch:
            batch = batch[0]
        elif isinstance(batch, dict) and batch:
            batch = next(iter(batch.values()))
        else:
            break
    return 0


def _len(obj: Any) -> int | None:
    try:
        return len(obj)
    except TypeError:  # an IterableDataset without __len__
        return None


class Side:
    """A pass over a loader that is not (yet known as) the training loader.

    Loader and iterator are held weakly: a pass left open (a peek at one batch) must not keep an iterator's
    worker processes alive.
    """

    __slots__ = ("hinted", "it", "loader", "losses", "owner", "taken")

    def __init__(self, loader: Any, it: Any, hinted: bool) -> None:
        self.loader, self.it, self.hinted = weakref.ref(loader), weakref.ref(it), hinted
        self.losses: list[Any] = []
        self.taken = False
        # A framework's wrapper of this loader that ends the pass itself and may give its exact value
        # (accelerate's prefetching loader: its base iterator is exhausted a batch before the pass is; see
        # frameworks.accelerate): ``owner.value(batch losses)`` -> the pass's value, or None for their mean.
        self.owner: Any = None

    def take(self, result: Any) -> None:
        """The first scalar loss of the current batch; later ones (extra metrics) are not the loss."""
        if not self.taken and isinstance(result, torch.Tensor) and result.numel() == 1:
            self.taken = True
            self.losses.append(hold(result))


class Loaders:
    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.train: weakref.ref | None = None
        self.eval_mode = False  # set by Module.train() on the largest module seen toggling
        self.model_size = 0
        self.fetch_phase = "data_loading"
        self.iters: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.names: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.batch_size: int | None = None  # samples per batch: the loader's, else the first batch's
        self.last_size: int | None = None
        self.total: int | None = None
        self.samples_before = 0  # of the training passes before the current one

    # -- iterators ------------------------------------------------------------------------------------------
    def on_iter(self, loader: Any, it: Any) -> None:
        probe = self.probe
        n = self.iters[loader] = self.iters.get(loader, 0) + 1
        train = self.train() if self.train is not None else None
        self.end_side()
        if loader is train:
            probe.report_pending()  # the epoch that ended without exhausting its iterator (a break)
            self.samples_before = self.samples_seen()
            probe.em.batch = None
            probe.live[BATCH] = UNSET
            probe.em.phase = "forward_pass"  # of the training batches ahead, as far as the probe can tell
            probe.train_vars = vars(it)
            self._epoch(loader, n)
            probe.idle()
            return
        hinted = not torch.is_grad_enabled() or self.eval_mode
        probe.side = Side(loader, it, hinted)
        probe.watch_side(True)
        if train is None and not hinted:
            self._epoch(loader, n)  # perhaps the training loader, before its first backward
            probe.idle()
        if hinted:
            probe.report_pending()
            em = probe.em
            self.fetch_phase = em.phase = "validation"
            em.emit("phase", {"phase": "validation"}, step=em.step, epoch=em.epoch, batch=em.batch)

    def _epoch(self, loader: Any, n: int) -> None:
        self.probe.em.epoch = self.probe.live[EPOCH] = self.probe.epoch0 + n - 1
        self.batch_size = loader.batch_size or self.batch_size
        self.total = _len(loader)
        size = _len(loader.dataset)
        last = self.batch_size
        if loader.batch_size and self.total and size and not loader.drop_last:  # the loader batches samples
            rest = size - loader.batch_size * (self.total - 1)
            last = rest if 0 < rest <= loader.batch_size else last  # not so for a sampler of its own
        self.last_size = last
        self.probe.total_batches = self.total

    def on_batch(self, it: Any, batch: Any) -> None:
        """Batches off the hot path: of a side pass, or of training while a side pass is open (a peek)."""
        side = self.probe.side
        if side is not None and it is side.it():
            side.taken = False
            if not side.hinted and self.train is None:
                if not self.batch_size:
                    self.batch_size = batch_len(batch)
                self._train_batch(it)
        elif vars(it) is self.probe.train_vars:  # a batch of training while a pass was open (a peek at one batch)
            self.end_side()
            self._train_batch(it)

    def _train_batch(self, it: Any) -> None:
        self.probe.em.batch = self.probe.live[BATCH] = it._num_yielded - 1
        self.probe.em.phase = "forward_pass"

    def samples_seen(self) -> int:
        """Training samples fetched so far: whole batches, the last one of a pass as long as it really is."""
        batch = self.probe.em.batch
        if batch is None or not self.batch_size:
            return self.samples_before
        n = batch + 1
        if n == self.total and self.last_size:
            return self.samples_before + (n - 1) * self.batch_size + self.last_size
        return self.samples_before + n * self.batch_size

    def ended(self, it: Any) -> None:
        side = self.probe.side
        if side is not None and it is side.it() and side.owner is None:
            self.end_side()

    # -- side passes --------------------------------------------------------------------------------------
    def on_backward(self) -> None:
        """A backward during a side pass: it was training; with no training loader yet, this is it."""
        probe = self.probe
        side, probe.side = probe.side, None
        self._close()
        loader = side.loader()
        if loader is not None and (self.train is None or self.train() is None):
            self.train = side.loader
            it = side.it()
            probe.train_vars = vars(it) if it is not None else None
            self._epoch(loader, self.iters.get(loader, 1))
            if "config" not in probe.off:
                probe.em.emit("config", {"data": describe(loader, self.total)})

    def end_side(self) -> None:
        """Close the open side pass; its losses, if any, are the validation loss of this epoch."""
        probe = self.probe
        side, probe.side = probe.side, None
        if side is None:
            return
        self._close()
        loader = side.loader()
        if side.losses and loader is not None:
            probe.report_pending()  # the last training step's row, which the validation value joins
            values = numbers(side.losses)
            value = side.owner.value(values) if side.owner is not None else None
            if value is None:
                value = sum(values) / len(values)
            probe.em.send_metrics({self._name(loader): value}, None, None, None, src="auto")
        probe.idle()

    def _close(self) -> None:
        self.probe.em.phase = "forward_pass"  # the pass is over, or was training: training, as far as the probe tells
        self.fetch_phase = "data_loading"
        self.probe.watch_side(False)

    def _name(self, loader: Any) -> str:
        k = self.names.get(loader)
        if k is None:
            k = self.names[loader] = len(self.names) + 1
        return "validation_loss" if k == 1 else f"validation_loss/{k}"


def describe(loader: Any, total: int | None) -> dict[str, Any]:
    """The training data section of training_config.json."""
    dataset = loader.dataset
    return {"loader": type(loader).__name__, "dataset": type(dataset).__name__, "dataset_size": _len(dataset),
            "batch_size": loader.batch_size, "batches_per_epoch": total, "num_workers": loader.num_workers,
            "drop_last": loader.drop_last, "sampler": type(loader.sampler).__name__}


def patch_dataloader(probe: Probe) -> Undo:
    loaders = probe.loaders = Loaders(probe)
    original_iter = DataLoader.__iter__
    original_next = _BaseDataLoaderIter.__next__
    em = probe.em

    @functools.wraps(original_iter)
    def __iter__(loader: Any) -> Any:
        it = original_iter(loader)
        try:
            loaders.on_iter(loader, it)
        except Exception as exc:  # noqa: BLE001
            probe.fail("dataloader", exc)
        return it

    @functools.wraps(original_next)
    def __next__(it: Any) -> Any:
        em.phase = loaders.fetch_phase
        try:
            batch = original_next(it)
        except StopIteration:
            try:
                loaders.ended(it)
            except Exception as exc:  # noqa: BLE001
                probe.fail("dataloader", exc)
            raise
        try:
            loaders.on_batch(it, batch)
        except Exception as exc:  # noqa: BLE001
            probe.fail("dataloader", exc)
        return batch

    def watch(on: bool) -> None:
        _BaseDataLoaderIter.__next__ = __next__ if on else original_next  # type: ignore[assignment]  # wraps()

    DataLoader.__iter__ = __iter__
    probe.side_watchers["dataloader"] = watch

    def undo() -> None:
        DataLoader.__iter__ = original_iter
        _BaseDataLoaderIter.__next__ = original_next

    return undo


def patch_module_mode(probe: Probe) -> Undo:
    """``model.eval()`` / ``model.train()``: only the largest module toggled so far speaks for the model, so a
    ``train()`` override that freezes a BatchNorm does not read as evaluation."""
    original = torch.nn.Module.train
    depth = [0]

    @functools.wraps(original)
    def train(self: Any, mode: bool = True) -> Any:
        loaders = probe.loaders
        if depth[0] == 0 and loaders is not None:
            try:
                size = sum(1 for _ in self.modules())
                if size >= loaders.model_size:
                    loaders.model_size, loaders.eval_mode = size, not mode
            except Exception as exc:  # noqa: BLE001
                probe.fail("mode", exc)
        depth[0] += 1
        try:
            return original(self, mode)
        finally:
            depth[0] -= 1

    torch.nn.Module.train = train

    def undo() -> None:
        torch.nn.Module.train = original

    return undo
