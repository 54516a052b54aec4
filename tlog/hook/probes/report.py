"""One report: the window's losses read at once, turned into one metrics event at the current step.

Rows are reports.  ``--log-every N`` reports at every step that is a multiple
of N (the mean loss of those N steps); the default (0) reports at the first
step and then at most every ``AUTO_INTERVAL_S`` seconds, so a 0.1 ms step
pays for one report per ~5,000 steps while a step slower than that interval
gets a row of its own.  Epoch ends, validation, checkpoints and exit report
what is pending, so each of them lands on an up-to-date row.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING, Any

import torch

from tlog.hook.probes.window import Summary

if TYPE_CHECKING:
    from tlog.hook.probes.state import Probe

MB = float(1 << 20)
AUTO_INTERVAL_S = 0.5  # --log-every 0 (the default): a report at most this often, and at the first step


def hyperparams(opt: Any, prefix: str) -> dict[str, float]:
    """lr of each param group (and momentum / betas of the first), named for a single or a named optimizer."""
    out: dict[str, float] = {}
    for g, group in enumerate(opt.param_groups):
        lr = group.get("lr")
        if lr is None:
            continue
        if g:
            out[f"lr/{prefix}group{g}" if prefix else f"lr/group{g}"] = float(lr)
            continue
        out[f"lr/{prefix.rstrip('/')}" if prefix else "learning_rate"] = float(lr)
        if prefix:
            continue
        if "momentum" in group:
            out["momentum"] = float(group["momentum"])
        betas = group.get("betas")
        if isinstance(betas, (tuple, list)) and len(betas) == 2:
            out["beta1"], out["beta2"] = float(betas[0]), float(betas[1])
    return out


def cuda_memory() -> dict[str, float]:
    """Allocator counters of the current CUDA device, when CUDA is in use (host-side reads: no sync)."""
    cuda = torch.cuda
    if not cuda.is_initialized():
        return {}
    return {"cuda_allocated_mb": round(cuda.memory_allocated() / MB, 1),
            "cuda_reserved_mb": round(cuda.memory_reserved() / MB, 1),
            "cuda_peak_mb": round(cuda.max_memory_allocated() / MB, 1)}


class Reporter:
    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.every = probe.settings.log_every
        self.next_step = self._next_multiple()  # --log-every N: the next step to report at ...
        self.next_t = 0.0  # ... else the time of the next report (the first step reports at once)
        self.nonfinite = 0
        self.samples0 = 0  # training samples seen at the start of the window
        self.due: tuple[int | None, int | None] | None = None  # (epoch, batch) of a report held for the row

    def report(self) -> None:
        """One metrics event for the window, after the held-back ``tlog.log`` calls: one read for all of them."""
        probe = self.probe
        em = probe.em
        epoch, batch = self.due or (None, None)
        self.due = None
        held, tensors = em.take_deferred()
        try:
            summary = probe.window.take(probe.primary, tensors)
            data = self._losses(summary)
            data.update(self._optimizers())
            data.update(self._throughput(summary))
            if summary.grad_norm is not None:
                data["gradient_norm"] = summary.grad_norm
            if probe.total_batches is not None:
                data["total_batches"] = probe.total_batches
            if "cuda" not in probe.off:
                data.update(self._guard("cuda", cuda_memory))
        except Exception as exc:  # noqa: BLE001 - a report that cannot be built: reports stop, training does not
            probe.fail("report", exc)
            em.deferred[:0] = held
            em.flush_deferred()
            return
        finally:
            self.next_t = perf_counter() + (0.0 if self.every else AUTO_INTERVAL_S)
            self.next_step = self._next_multiple()
        em.emit_deferred(held, summary.extra)
        if probe.owned:  # a framework adapter's numbers (tlog/hook/frameworks) win: not the probe's guess
            data = {k: v for k, v in data.items() if k not in probe.owned}
        em.metrics(data, probe.step, epoch, batch, src="auto")
        if any(st.dead for st in probe.optimizers):  # reported for the last time
            probe.optimizers = [st for st in probe.optimizers if not st.dead or st is probe.primary]

    def _next_multiple(self) -> int:
        return (self.probe.step // self.every + 1) * self.every if self.every else 0

    def soon(self) -> None:
        """Report at the end of the step in progress, whatever the schedule (the last batch of an epoch)."""
        self.next_step = 0
        self.next_t = 0.0

    def _losses(self, summary: Summary) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if summary.loss is not None:
            data["loss"] = summary.loss
        if len(self.probe.optimizers) > 1:
            data.update({f"loss/{name}": value for name, value in summary.per_owner.items()})
        if summary.nonfinite:
            if not self.nonfinite:
                self._warn_nonfinite(summary.first_nonfinite_step)
            self.nonfinite += summary.nonfinite
        if self.nonfinite:
            data["nonfinite_steps"] = self.nonfinite
        return data

    def _warn_nonfinite(self, step: int | None) -> None:
        """Counted from values read anyway; the first one is a warning at its own step."""
        em = self.probe.em
        em.emit("warning", {"message": f"non-finite loss (nan or inf) first seen at step {step}",
                            "category": "nan"}, step=step, epoch=em.epoch, batch=em.batch)

    def _optimizers(self) -> dict[str, Any]:
        """Hyperparameters as of the last step of each optimizer (held until now, even if the script let go)."""
        probe = self.probe
        out: dict[str, Any] = {}
        many = len(probe.optimizers) > 1
        for st in probe.optimizers:
            opt, st.pending = st.pending or st.ref(), None
            if opt is None:
                continue
            if st is probe.primary:
                out.update(hyperparams(opt, ""))
            if many:
                out[f"steps/{st.name}"] = st.steps
                out.update(hyperparams(opt, f"{st.name}/"))
        return out

    def _throughput(self, summary: Summary) -> dict[str, float]:
        seen = self.probe.samples_seen()
        samples, self.samples0 = seen - self.samples0, seen
        if summary.elapsed <= 0 or not summary.steps:
            return {}
        out = {"steps_per_s": round(summary.steps / summary.elapsed, 3)}
        if samples:
            out["samples_per_s"] = round(samples / summary.elapsed, 3)
        return out

    def _guard(self, name: str, read: Any) -> dict[str, Any]:
        try:
            return read()
        except Exception as exc:  # noqa: BLE001
            self.probe.fail(name, exc)
            return {}
