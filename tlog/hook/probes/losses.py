"""Losses: the tensor each backward starts from, and the losses computed during validation.

``Tensor.backward`` and ``torch.autograd.backward`` hand their scalar to the
probe (``GradScaler.scale`` is followed so that AMP records the loss, not the
loss times the scale).  During a pass over a loader other than the training
one, and only then, loss modules (``nn.modules.loss._Loss``) and the
functional losses of ``torch.nn.functional`` are patched to report their
scalar result to that pass: training never pays for them.  (A crash inside
a loss is still named as one: the classifier reads it from the frames.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional
from torch.nn.modules.loss import _Loss

from tlog.hook.live import BATCH
from tlog.hook.probes import accumulation
from tlog.hook.probes.state import Probe, Undo

FUNCTIONAL_LOSSES = (
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "cosine_embedding_loss", "cross_entropy",
    "ctc_loss", "gaussian_nll_loss", "hinge_embedding_loss", "huber_loss", "kl_div", "l1_loss",
    "margin_ranking_loss", "mse_loss", "multi_margin_loss", "multilabel_margin_loss",
    "multilabel_soft_margin_loss", "nll_loss", "poisson_nll_loss", "smooth_l1_loss", "soft_margin_loss",
    "triplet_margin_loss", "triplet_margin_with_distance_loss",
)


def _scalar_of(tensors: Any) -> Any:
    """The loss in ``torch.autograd.backward(tensors)``: one tensor, or the sum of several scalars; None for
    what is not a loss (gradient edges, tensors of several elements)."""
    if isinstance(tensors, torch.Tensor):
        return tensors
    items = list(tensors)
    if not items or not all(isinstance(t, torch.Tensor) and t.numel() == 1 for t in items):
        return None
    if len(items) == 1:
        return items[0]
    return sum(t.detach().reshape(()) for t in items)


def _loss_of(tensors: Any) -> Any:
    """The loss of ``torch.autograd.backward(tensors, ...)``, or None for what is not one."""
    loss = _scalar_of(tensors)
    return loss if loss is not None and loss.numel() == 1 else None


def patch_backward(probe: Probe) -> Undo:
    """Every backward hands its loss to the probe: ``Tensor.backward`` and ``torch.autograd.backward``.

    ``loss.backward()`` is half of the probe's per-step cost, so its usual case (no gradient given: a scalar;
    a plain tensor; no ``__torch_function__`` mode) is served by a replacement of ``Tensor.backward``
    that does what torch's does (call ``torch.autograd.backward``) plus the probe's few lines: the frame is
    one the step pays anyway.  (Holding the loss tensor itself, to read a batch of them later, costs more
    than reading a CPU one at once: the held tensors and their graph nodes defeat the allocator's reuse.)
    Every other case goes through torch's ``Tensor.backward`` to the wrapped
    ``torch.autograd.backward``.  Neither sets a phase: a crash in the backward shows torch's autograd frames,
    which name it (see ``state``).  A backward inside a backward (reentrant activation checkpointing, which
    passes gradients) is part of the outer one.
    """
    original = torch.autograd.backward
    original_method = torch.Tensor.backward
    tensor_cls = torch.Tensor
    torch_function = torch._C._has_torch_function_unary
    nested = torch._C._current_graph_task_id  # -1 outside a backward
    em = probe.em
    window = probe.window
    page = probe.live
    division, product = accumulation.scale_ops(torch)
    scaled_ops = frozenset({division, product})

    def note(loss: Any) -> bool:
        """Hold the loss (see ``window``) and note the batch; True if this backward is a step of its own (no
        optimizer exists)."""
        try:
            if probe.side is not None or probe.scaled is not None or probe.in_step is not None:
                loss = probe.unusual_backward(loss)
                if loss is None:
                    return False
            value = loss.item() if loss.is_cpu else loss.detach()  # window.hold, inlined
            if loss.grad_fn.__class__ in scaled_ops:  # ``loss / N`` before the backward: see ``accumulation``
                value = accumulation.rescale(value, loss.grad_fn, division, probe)
            window.losses.append(value)
            counts = probe.train_vars  # Probe.locate, inlined
            if counts is not None:
                em.batch = page[BATCH] = n = counts["_num_yielded"] - 1
                if n + 1 == probe.total_batches:  # the epoch's last batch: its step reports
                    probe.reporter.soon()
            return not probe.optimizers
        except Exception as exc:  # noqa: BLE001 - an odd tensor: the backward itself goes on
            probe.fail("loss", exc)
            return False

    @functools.wraps(original_method)
    def backward_method(self: Any, gradient: Any = None, retain_graph: Any = None, create_graph: Any = False,
                        inputs: Any = None) -> None:
        if gradient is not None or self.__class__ is not tensor_cls or torch_function(self):
            return original_method(self, gradient, retain_graph, create_graph, inputs)
        own_step = note(self)
        original(self, None, retain_graph, create_graph, inputs=inputs)
        if own_step:
            probe.end_step()  # no optimizer at all: each backward is a step
        return None

    @functools.wraps(original)
    def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
        if nested() != -1:
            return original(tensors, *args, **kwargs)
        try:
            loss = _loss_of(tensors)
        except Exception as exc:  # noqa: BLE001
            probe.fail("loss", exc)
            loss = None
        own_step = loss is not None and note(loss)
        result = original(tensors, *args, **kwargs)
        if own_step:
            probe.end_step()
        return result

    torch.Tensor.backward = backward_method
    torch.autograd.backward = backward

    def undo() -> None:
        torch.Tensor.backward = original_method
        torch.autograd.backward = original

    return undo


def patch_scaler(probe: Probe) -> Undo:
    from torch.amp.grad_scaler import GradScaler

    original = GradScaler.scale

    @functools.wraps(original)
    def scale(self: Any, outputs: Any) -> Any:
        scaled = original(self, outputs)
        if isinstance(outputs, torch.Tensor):
            probe.scaled = (scaled, outputs)
        return scaled

    GradScaler.scale = scale

    def undo() -> None:
        GradScaler.scale = original

    return undo


class Capture:
    """Routes loss results to the open side pass; one loss call at a time (a module calls its functional)."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.busy = False
        self.originals = {name: getattr(functional, name) for name in FUNCTIONAL_LOSSES
                          if hasattr(functional, name)}
        self.wrapped = {name: self._wrap(fn) for name, fn in self.originals.items()}

    def call(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        if self.busy:
            return fn(*args, **kwargs)
        self.busy = True
        try:
            result = fn(*args, **kwargs)
        finally:
            self.busy = False
        side = self.probe.side
        if side is not None:
            try:
                side.take(result)
            except Exception as exc:  # noqa: BLE001 - an odd result: the caller gets it all the same
                self.probe.fail("validation", exc)
        return result

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def loss(*args: Any, **kwargs: Any) -> Any:
            return self.call(fn, args, kwargs)

        return loss

    def functional(self, on: bool) -> None:
        """Patch the functional losses for the length of a side pass only: training never pays for them."""
        for name, fn in (self.wrapped if on else self.originals).items():
            setattr(functional, name, fn)


def patch_loss_modules(probe: Probe) -> Undo:
    capture = Capture(probe)
    had_own = "__call__" in _Loss.__dict__
    original = _Loss.__call__

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        side = probe.side
        if side is not None and not side.hinted:
            probe.em.phase = "loss_computation"  # training, perhaps: the first epoch, before its first backward
        return capture.call(original, (self, *args), kwargs)

    def watch(on: bool) -> None:
        capture.functional(on)
        if on:
            _Loss.__call__ = __call__
        elif had_own:
            _Loss.__call__ = original
        elif "__call__" in _Loss.__dict__:
            del _Loss.__call__

    probe.side_watchers["validation"] = watch
    return functools.partial(watch, False)
