"""Optimizers: steps through torch's global step hooks, and their settings into training_config.json.

The step hooks (``register_optimizer_step_post_hook``, and ``pre_hook`` when
needed) see every optimizer, closures and LBFGS included, with no patch of
``step``; the post hook is ``Probe.end_step`` itself (see ``state``).  Creation
is seen by wrapping ``Optimizer.__init__`` (every optimizer calls it): it
names the optimizer (opt1, opt2, ... in creation order), records its class,
hyperparameters and the model's parameter count, and tells the probe that
backwards are no longer steps of their own.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from typing import Any

import torch
from torch.optim.optimizer import Optimizer, register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from tlog.hook.probes.args import jsonable
from tlog.hook.probes.state import OptState, Probe, Undo


def describe(opt: Any) -> dict[str, Any]:
    """Class and hyperparameters (each param group's settings, params left out)."""
    groups = [{k: jsonable(v) for k, v in group.items() if k != "params"} for group in opt.param_groups]
    out: dict[str, Any] = {"class": type(opt).__name__, **(groups[0] if groups else {})}
    if len(groups) > 1:
        out["param_groups"] = groups
    return out


def _requires_closure(opt: Any) -> bool:
    """LBFGS & co.: ``step(closure)`` evaluates it (and backward) several times.  An optional closure is
    evaluated once by torch's optimizers: its backward is simply the step's loss."""
    closure = inspect.signature(type(opt).step).parameters.get("closure")
    return closure is not None and closure.default is inspect.Parameter.empty


def model_section(optimizers: list[Any]) -> dict[str, Any]:
    """Parameter count of the model(s) being trained, from the optimizers' parameters (shared ones once)."""
    params = {id(p): p for opt in optimizers for group in opt.param_groups for p in group["params"]}
    values = list(params.values())
    devices = sorted({str(p.device) for p in values})
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in values})
    return {"parameters": sum(p.numel() for p in values),
            "trainable": sum(p.numel() for p in values if p.requires_grad),
            "device": ", ".join(devices), "dtype": ", ".join(dtypes)}


class Optimizers:
    """Known optimizers (``probe.by_id``), each entry dropped when its optimizer is collected (no attribute is
    set on the optimizer: pickling or deep-copying it stays the user's business)."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.grad_every = probe.settings.grad_norm
        self.by_id = probe.by_id
        self.count = 0
        self.pre_hook: Any = None  # armed only when needed: a call per step saved in the usual loop

    def arm_pre_hook(self) -> None:
        """The pre-step hook serves gradient norms, closure steps and several optimizers; else it stays off
        (the optimization_step phase is then set when the backward returns)."""
        if self.pre_hook is None:
            self.pre_hook = register_optimizer_step_pre_hook(self.pre)

    def created(self, opt: Any) -> OptState:
        probe = self.probe
        key = id(opt)
        self.count += 1
        st = OptState(weakref.ref(opt, lambda _: self._collected(key)), self.count)
        self.by_id[key] = st
        probe.optimizers.append(st)
        if len(probe.optimizers) > 1 or _requires_closure(opt):
            self.arm_pre_hook()
        if "config" not in probe.off:
            try:
                self._config()
            except Exception as exc:  # noqa: BLE001 - a lazy module's uninitialised parameters, say
                probe.fail("config", exc)
        return st

    def _collected(self, key: int) -> None:
        """An optimizer is gone (a new one per training phase, or the end of the script): the next one to step
        becomes primary; its steps still in the window are reported under its name."""
        st = self.by_id.pop(key, None)
        if st is not None:
            st.dead = True

    def _config(self) -> None:
        live = [(st, opt) for st in self.probe.optimizers if (opt := st.ref()) is not None]
        section: dict[str, Any] = {"optimizer": describe(live[0][1]), "model": model_section([o for _, o in live])}
        if len(live) > 1:
            section["optimizers"] = {st.name: describe(opt) for st, opt in live}
        self.probe.em.emit("config", section)

    def pre(self, opt: Any, args: tuple, kwargs: dict) -> None:
        """Entering a step: its phase; with a closure, the backwards inside belong to this step."""
        probe = self.probe
        probe.em.phase = "optimization_step"
        if len(args) == 1 and not kwargs and not self.grad_every and probe.reporter.due is None:
            return
        try:
            st = self.by_id.get(id(opt)) or self.created(opt)
            if probe.reporter.due is not None and st is probe.primary:
                probe.reporter.report()
            if len(args) > 1 or kwargs:  # step(closure): LBFGS & co. call backward in there
                probe.in_step = st
                window = probe.window
                probe.step_loss_seen = len(window.losses) > window.mark
            if self.grad_every and (probe.step + 1) % self.grad_every == 0 and st is (probe.primary or st):
                self._grad_norm(opt)
        except Exception as exc:  # noqa: BLE001
            probe.fail("step", exc)

    def _grad_norm(self, opt: Any) -> None:
        """One fused norm over the step's gradients; a tensor, read with the next report."""
        if "grad_norm" in self.probe.off:
            return
        try:
            grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
            if grads:
                self.probe.window.grad_norm = torch.nn.utils.get_total_norm(grads)
        except Exception as exc:  # noqa: BLE001 - an older torch without get_total_norm, say
            self.probe.fail("grad_norm", exc)


def patch(probe: Probe) -> Undo:
    optimizers = Optimizers(probe)
    original_init = Optimizer.__init__

    @functools.wraps(original_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        if id(self) not in optimizers.by_id:
            try:
                optimizers.created(self)
            except Exception as exc:  # noqa: BLE001
                probe.fail("step", exc)

    Optimizer.__init__ = __init__
    probe.register_optimizer = optimizers.created
    post = register_optimizer_step_post_hook(probe.end_step)
    if optimizers.grad_every:
        optimizers.arm_pre_hook()

    def undo() -> None:
        Optimizer.__init__ = original_init
        post.remove()
        if optimizers.pre_hook is not None:
            optimizers.pre_hook.remove()

    return undo
