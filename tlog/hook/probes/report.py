"""One report: the window's losses read at once, turned into one metrics event for its steps.

By default (``--log-every 0``) every step keeps its own row: the report at
the first step, then at most every ``AUTO_INTERVAL_S`` seconds, sends one
event whose ``steps`` columns hold the window's earlier steps (step, batch,
loss, the learning rate where it changed, the ``tlog.log`` values of those
steps) and whose data is the last step's, with what belongs to the window as
a whole (throughput, memory, gradient norm).  The window is the unit of
transfer, so a 0.1 ms step pays for one event per ~5,000 steps and a GPU run
synchronises at most twice a second.  ``--log-every N`` reports at every
step that is a multiple of N, one row with the mean loss of those N steps.
Epoch ends, validation, checkpoints and exit report what is pending, so each
of them lands on an up-to-date row.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING, Any

import torch

from tlog.hook.emitter import _scalar
from tlog.hook.probes.window import Summary
from tlog.protocol import finite

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
        steps = None
        try:
            summary = probe.window.take(probe.primary, tensors)
            data = self._losses(summary)
            data.update(self._optimizers())
            primary = probe.primary
            if primary is not None and primary.lr.__class__ is float:
                data["learning_rate"] = primary.lr  # the lr of the last step, even if a scheduler moved on since
            data.update(self._throughput(summary))
            if summary.grad_norm is not None:
                data["gradient_norm"] = summary.grad_norm
            if probe.total_batches is not None:
                data["total_batches"] = probe.total_batches
            if "cuda" not in probe.off:
                data.update(self._guard("cuda", cuda_memory))
            if probe.owned:  # a framework adapter's numbers (tlog/hook/frameworks) win: not the probe's guess
                data = {k: v for k, v in data.items() if k not in probe.owned}
            held = em.resolve_deferred(held, summary.extra)
            if not self.every and summary.rows:
                held, steps = self._per_step(summary, data, held)
        except Exception as exc:  # noqa: BLE001 - a report that cannot be built: reports stop, training does not
            probe.fail("report", exc)
            em.deferred[:0] = held
            em.flush_deferred()
            return
        finally:
            self.next_t = perf_counter() + (0.0 if self.every else AUTO_INTERVAL_S)
            self.next_step = self._next_multiple()
        for call in held:
            em.send_metrics(*call)
        em.send_metrics(data, probe.step, epoch, batch, src="auto", steps=steps)
        if any(st.dead for st in probe.optimizers):  # reported for the last time
            probe.optimizers = [st for st in probe.optimizers if not st.dead or st is probe.primary]

    def _per_step(self, summary: Summary, data: dict[str, Any], held: list) -> tuple[list, dict | None]:
        """The window's rows: loss (per optimizer with several), the learning rate where it changed and the
        held ``tlog.log`` values, each at its step; the last row goes into ``data``, the others become the
        event's ``steps`` columns.  Returns the held calls that are not of these rows, and the columns."""
        owned, several = self.probe.owned, len(self.probe.optimizers) > 1
        rows = {k: v for k, v in summary.rows.items() if k not in owned and (several or not k.startswith("loss/"))}
        n = len(rows["step"])
        pos = {step: i for i, step in enumerate(rows["step"])}
        if summary.nonfinite:
            for key in [k for k in rows if k.startswith("loss")]:
                rows[key] = [v if v is None or v - v == 0 else finite(v) for v in rows[key]]
        lrs = [(step, lr) for step, lr in summary.lrs
               if lr.__class__ is float and step in pos and "learning_rate" not in owned]
        if lrs:
            column = rows["learning_rate"] = [None] * n
            for step, lr in lrs:
                column[pos[step]] = lr
        rest = [call for call in held if not _merge(call, rows, pos, self.probe.em.epoch)]
        for key in [k for k in data if k == "loss" or k.startswith("loss/")]:
            del data[key]  # the window's means: the last row's own values replace them
        last = n - 1
        if rows["step"][last] == self.probe.step:
            for key, column in rows.items():
                if key not in ("step", "batch") and column[last] is not None:
                    data[key] = column[last]
            n = last
        steps = {key: column[:n] for key, column in rows.items()
                 if key == "step" or any(v is not None for v in column[:n])}
        if not n or all(key in ("step", "batch") for key in steps):
            return rest, None  # no values in the earlier rows (a framework adapter reports them itself)
        return rest, steps

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


def _merge(call: tuple, rows: dict[str, list], pos: dict[int, int], epoch: int | None) -> bool:
    """Put a held ``tlog.log`` call into its step's row (its values win over the probe's, as in the store);
    False when it is not of the window (another step or epoch) or holds what a column cannot (text)."""
    data, step, call_epoch, _batch, _src = call
    i = pos.get(step)
    if i is None or call_epoch != epoch:
        return False
    clean = {}
    for key, value in data.items():
        if key in ("step", "batch"):
            return False
        cls = value.__class__
        if cls is not float and cls is not int and value is not None:
            value = _scalar(value)
            if value.__class__ is str:
                return False
        elif cls is float and value - value != 0:
            value = finite(value)
        clean[key] = value
    n = len(rows["step"])
    for key, value in clean.items():
        if value is not None:
            rows.setdefault(key, [None] * n)[i] = value
    return True
