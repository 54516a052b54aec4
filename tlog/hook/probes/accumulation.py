"""Gradient accumulation's pre-divided losses: ``loss = loss / N; loss.backward()`` recorded on the script's scale.

A script that accumulates N micro-batches per optimizer step often divides each micro-batch's loss by N
before its backward (nanoGPT, Lightning, HF Trainer), so the scalar ``backward()`` runs on is 1/N of the loss
the script means.  The rule, structural and free of device reads:

- a backward whose tensor is the output of a division by a constant c, or of a multiplication by 1/c (a
  Python number, or a one-element CPU tensor that needs no gradient, read from the operand autograd saved:
  reading CPU memory synchronises nothing), with c > 1, is held as its value times c (a device value is
  multiplied on the device, not read);
- when the step closes, the multiplication stands only if every backward of the step was so divided, by the
  same c, and c equals the number of backwards in the step (the micro-batches): that is the accumulation
  idiom.  Otherwise (a loss halved for its own reasons, a weighted term, a loop with no optimizer where each
  backward is a step) the held values are put back as they were backpropagated.

The step's loss is then, as for an unscaled loop (``loss.backward()`` on each micro-batch's own loss), the mean
of its micro-batch losses.  Per backward the probe pays one attribute read and one set lookup (``scale_ops``);
only a matching backward pays more.
"""

from __future__ import annotations

import math
from typing import Any


def scale_ops(torch: Any) -> tuple[type, type]:
    """The autograd node classes of ``x / c`` and ``x * c`` in this torch."""
    x = torch.ones((), requires_grad=True)
    return type((x / 2).grad_fn), type((x * 0.5).grad_fn)


def divisor(fn: Any, division: type) -> float | None:
    """c of ``x / c`` (``division`` is its node class) or of ``x * (1/c)``; None if the other operand is not a
    constant number held on the CPU, or c is not above 1."""
    other = fn._saved_other
    if other.numel() != 1 or not other.is_cpu or other.requires_grad:
        return None
    c = float(other)
    if fn.__class__ is not division:
        c = 1.0 / c if c else 0.0
    return c if c > 1.0 and math.isfinite(c) else None


def rescale(value: Any, fn: Any, division: type, probe: Any) -> Any:
    """The value to hold for a backward of ``x / c`` (or ``x * (1/c)``): times c, noted for ``settle``."""
    c = divisor(fn, division)
    if c is None:
        return value
    window = probe.window
    probe.rescaled.append((len(window.losses) - window.mark, c))
    return value * c


def settle(losses: list[Any], mark: int, pending: list[tuple[int, float]]) -> None:
    """At the end of a step (its losses are ``losses[mark:]``): undo the step's multiplications unless they are
    the accumulation idiom (see the module's docstring).  ``pending`` holds (offset from ``mark``, c)."""
    n = len(losses) - mark
    if len(pending) != n or any(abs(c - n) > 1e-6 * n for _, c in pending):
        for offset, c in pending:
            losses[mark + offset] = losses[mark + offset] / c
    pending.clear()
