"""Losses: the tensor each backward starts from, and the losses computed during validation.

``Tensor.backward`` and ``torch.autograd.backward`` hand their scalar to the
probe (``GradScaler.scale`` is followed so that AMP records the loss, not the
loss times the scale).  Loss modules (``nn.modules.loss._Loss``) mark the
loss_computation phase; during a pass over a loader other than the training
one, they and the functional losses of ``torch.nn.functional`` (patched only
for the length of that pass) report their scalar result to it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional
from torch.nn.modules.loss import _Loss

from tlog.hook.probes.state import Probe, Undo

FUNCTIONAL_LOSSES = (
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "cosine_embedding_loss", "cross_entropy",
    "ctc_loss", "gaussian_nll_loss", "hinge_embedding_loss", "huber_loss", "kl_div", "l1_loss",
    "margin_ranking_loss", "mse_loss", "multi_margin_loss", "multilabel_margin_loss",
    "multilabel_soft_margin_loss", "nll_loss", "poisson_nll_loss", "smooth_l1_loss", "soft_margin_loss",
    "triplet_margin_loss", "triplet_margin_with_distance_loss",
)


def _scalar_of(tensors: Any) -> Any:
    """The loss in ``torch.autograd.backward(tensors)``: one tensor, or the sum of several scalars."""
    if isinstance(tensors, torch.Tensor):
        return tensors
    items = list(tensors)
    if len(items) == 1:
        return items[0]
    if all(t.numel() == 1 for t in items):
        return sum(t.detach().reshape(()) for t in items)
    return items[0]


def patch_backward(probe: Probe) -> Undo:
    """``Tensor.backward`` calls ``torch.autograd.backward``: patching the latter sees both, in one wrapper.

    A backward inside a backward (reentrant activation checkpointing) is part of the outer one.
    """
    original = torch.autograd.backward
    tensor_cls = torch.Tensor
    busy = [False]

    @functools.wraps(original)
    def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
        if busy[0]:
            return original(tensors, *args, **kwargs)
        own_step = probe.on_backward(tensors if tensors.__class__ is tensor_cls else _scalar_of(tensors))
        busy[0] = True
        try:
            result = original(tensors, *args, **kwargs)
        finally:
            busy[0] = False
        probe.em.phase = "optimization_step"  # what follows a backward: clipping, the optimizer's step
        if own_step:
            probe.end_step(None)
        return result

    torch.autograd.backward = backward

    def undo() -> None:
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
    capture = probe.capture = Capture(probe)
    had_own = "__call__" in _Loss.__dict__
    original = _Loss.__call__

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        side = probe.side
        if side is None:
            probe.em.phase = "loss_computation"
            return original(self, *args, **kwargs)
        if not side.hinted:
            probe.em.phase = "loss_computation"
        return capture.call(original, (self, *args), kwargs)

    _Loss.__call__ = __call__

    def undo() -> None:
        capture.functional(False)
        if had_own:
            _Loss.__call__ = original
        else:
            del _Loss.__call__

    return undo
