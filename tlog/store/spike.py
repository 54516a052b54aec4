"""The largest single-step spike of the loss: the step whose value stands highest over the running median.

Why: with every step recorded, the one-step spike people open a loss curve to find is in the data; the
summary names it (step, value, ratio) so nobody has to scroll for it.  The running median is the median of
the last completed block of steps before the step's own block; blocks grow with the run (as many steps as
came before, from ``MIN_BLOCK`` to ``MAX_BLOCK``), so a short run has a median after 8 steps and a long one
a steady reference.  O(1) memory, and per step a list append plus, once per block, one sort; a window's
values go through in slices at C speed (``max``/``index`` over a list).  A median that is not positive
gives no ratio (a loss that goes negative has no spike in this sense).

State is a JSON list, ``[block, median, best, seen]`` with ``best = [step, value, ratio, median]``, because the
summary fold is saved with its snapshot.
"""

from __future__ import annotations

from typing import Any

MIN_BLOCK, MAX_BLOCK = 8, 256


def new() -> list[Any]:
    return [[], None, None, 0]


def add_many(state: list[Any], values: list[Any], steps: list[int | None]) -> None:
    """Fold a series' values (finite floats or ints; anything else is skipped) at their steps, in order."""
    try:
        total = sum(values)
        clean = total - total == 0
    except TypeError:
        clean = False
    if not clean:
        pairs = [(v, s) for v, s in zip(values, steps, strict=True)
                 if (v.__class__ is float or v.__class__ is int) and v - v == 0]
        values, steps = [v for v, _ in pairs], [s for _, s in pairs]
    block = state[0]
    start = 0
    while start < len(values):
        size = min(MAX_BLOCK, max(MIN_BLOCK, state[3]))
        end = min(len(values), start + size - len(block))
        part = values[start:end]
        median = state[1]
        if median is not None and median > 0:
            top = max(part)
            ratio = top / median
            best = state[2]
            if best is None or ratio > best[2]:
                state[2] = [steps[start + part.index(top)], top, ratio, median]
        block.extend(part)
        if len(block) >= size:
            state[1] = sorted(block)[len(block) // 2]
            state[3] += len(block)
            block.clear()
        start = end


def result(state: list[Any], metric: str) -> dict[str, Any] | None:
    best = state[2]
    if best is None:
        return None
    step, value, ratio, median = best
    return {"metric": metric, "step": step, "value": value, "ratio": round(ratio, 3), "median": median}
