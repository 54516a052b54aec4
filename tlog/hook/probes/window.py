"""The losses of the steps since the last report, and their summary.

A loss on the CPU is read as a number at its backward (reading CPU memory is
no synchronisation); a loss on an accelerator is kept, detached, and all of
them are read in one transfer at the report, so the device is synchronised
once per report, never per step.  Per step the window gets a few appends;
the summary (per-step losses for gradient accumulation, per optimizer,
non-finite steps; their means for ``--log-every N``) runs over the numbers at
report time, in C-speed list operations for the usual loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from tlog.hook.emitter import read_scalars


@dataclass
class Summary:
    loss: float | None = None  # mean step loss of the primary optimizer (or of bare backwards)
    per_owner: dict[str, float] = field(default_factory=dict)  # mean step loss of each optimizer, when several
    nonfinite: int = 0
    first_nonfinite_step: int | None = None
    grad_norm: float | None = None
    extra: list[float] = field(default_factory=list)  # values of the other tensors read along
    steps: int = 0  # primary steps covered
    elapsed: float = 0.0  # seconds covered
    # Per step, in step order: "step", "batch", "loss", and "loss/<opt>" with several optimizers (None where
    # a step has no value); the default schedule sends these, ``--log-every N`` their means above.
    rows: dict[str, list[Any]] = field(default_factory=dict)
    lrs: list[tuple[int, float]] = field(default_factory=list)  # (step, lr) where the primary's lr changed


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def hold(loss: Any) -> Any:
    """What to keep of a one-element loss: its number when on the CPU, else the tensor, detached (no sync)."""
    return loss.item() if loss.is_cpu else loss.detach()


def numbers(values: list[Any], extra: tuple | list = ()) -> list[float]:
    """``values`` as numbers, then ``extra`` read: every tensor among them in one transfer."""
    read = iter(read_scalars([v for v in values if v.__class__ is not float] + list(extra)))
    out = [v if v.__class__ is float else next(read) for v in values]
    out.extend(read)
    return out


class Window:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Empty, as new, in place: the backward patch holds this object."""
        self.losses: list[Any] = []  # numbers (CPU losses) or detached one-element tensors, in backward order
        self.ends: list[int] = []  # per closed step: where its losses end in ``losses``
        self.owners: list[Any] = []  # per closed step: its optimizer's OptState, None for a bare backward
        self.stepnos: list[int] = []  # per closed step: the global step it belongs to
        self.batches: list[int | None] = []  # per closed step: the batch index at its close
        self.lrs: list[tuple[int, float]] = []  # (step, lr) where the primary's learning rate changed
        self.mark = 0  # losses before it belong to closed steps; after it, to the step in progress
        self.primary_steps = 0
        self.grad_norm: Any = None  # a tensor, read with the losses
        self.t0: float | None = None  # set when training starts (a training pass) and after each report

    def close(self, owner: Any, step: int, batch: int | None) -> None:
        self.mark = end = len(self.losses)
        self.ends.append(end)
        self.owners.append(owner)
        self.stepnos.append(step)
        self.batches.append(batch)

    def take(self, primary: Any, extra: list[Any]) -> Summary:
        """Summarise the closed steps, reading ``extra`` tensors in the same transfer; the window starts anew
        (the step in progress keeps its losses)."""
        now = perf_counter()
        out = Summary(steps=self.primary_steps, elapsed=now - self.t0 if self.t0 is not None else 0.0,
                      lrs=self.lrs)
        values = numbers(self.losses[:self.mark], ([self.grad_norm] if self.grad_norm is not None else []) + extra)
        out.extra = values[len(values) - len(extra):]
        del values[len(values) - len(extra):]
        if self.grad_norm is not None:
            out.grad_norm = values.pop()
        if self.ends:
            self._summarise(values, primary, out)
        self.losses = self.losses[self.mark:]
        self.ends, self.owners, self.stepnos, self.batches, self.lrs = [], [], [], [], []
        self.mark, self.primary_steps, self.grad_norm, self.t0 = 0, 0, None, now
        return out

    def _summarise(self, values: list[float], primary: Any, out: Summary) -> None:
        ends, owners = self.ends, self.owners
        steps = len(ends)
        if steps == len(values) and ends == list(range(1, steps + 1)):  # one loss per step: the usual loop
            per_step: Sequence[float | None] = values
        else:
            per_step = [sum(values[a:b]) / (b - a) if b > a else None
                        for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        first = owners[0]
        if (first is None or first is primary) and owners.count(first) == steps and per_step is values:
            out.loss = _mean(values)
            total = out.loss
            out.rows = {"step": self.stepnos, "batch": self.batches, "loss": values}
        else:
            out.rows = self._rows(per_step, primary)
            main = [v for v, o in zip(per_step, owners, strict=True) if v is not None and (o is None or o is primary)]
            out.loss = _mean(main)
            named = sorted({o for o in owners if o is not None}, key=lambda o: o.index)
            for owner in named:
                own = [v for v, o in zip(per_step, owners, strict=True) if v is not None and o is owner]
                if own:
                    out.per_owner[owner.name] = sum(own) / len(own)
            total = sum(v for v in per_step if v is not None)
        if total is not None and not math.isfinite(total):  # a sum is finite only if every term is
            bad = [i for i, v in enumerate(per_step) if v is not None and not math.isfinite(v)]
            out.nonfinite = len(bad)
            if bad:
                out.first_nonfinite_step = self.stepnos[bad[0]]

    def _rows(self, per_step: Sequence[float | None], primary: Any) -> dict[str, list[Any]]:
        """Per-step columns when steps and losses are not one to one: a step's losses averaged (gradient
        accumulation), each optimizer's under its name, a step without loss None."""
        pos: dict[int, int] = {}
        steps: list[int] = []
        batches: list[int | None] = []
        for stepno, batch in zip(self.stepnos, self.batches, strict=True):
            if stepno not in pos:
                pos[stepno] = len(steps)
                steps.append(stepno)
                batches.append(batch)
        rows: dict[str, list[Any]] = {"step": steps, "batch": batches, "loss": [None] * len(steps)}
        named = len({o for o in self.owners if o is not None}) > 1
        for value, owner, stepno in zip(per_step, self.owners, self.stepnos, strict=True):
            if value is None:
                continue
            if owner is None or owner is primary:
                rows["loss"][pos[stepno]] = value
            if named and owner is not None:
                rows.setdefault(f"loss/{owner.name}", [None] * len(steps))[pos[stepno]] = value
        return rows
