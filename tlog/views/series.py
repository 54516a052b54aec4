"""Curves made drawable: TensorBoard's smoothing, downsampling that keeps every extreme, and twin names.

A million-point curve is drawn from about four points per horizontal bucket: the first, the lowest, the
highest and the last (the M4 method), so a one-step spike, a divergence or the final value survive at any
length, which dropping the tail or sampling at random would not guarantee.  Smoothing is computed on the
full series, before downsampling.
"""

from __future__ import annotations

import math

import numpy as np

TRAIN_PREFIXES = ("train_", "training_", "train/", "training/")
VALIDATION_PREFIXES = ("validation_", "val_", "valid_", "eval_", "test_", "validation/", "val/", "valid/",
                       "eval/", "test/")
BUCKETS = 1000


def smooth(y: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average.

    ``s_n = w s_{n-1} + (1 - w) y_n`` from ``s_0 = 0``, divided by ``1 - w^n`` so the start is not pulled to
    zero; non-finite points are passed through and do not enter the average.  Vectorised by blocks: inside
    a block the recurrence is a cumulative sum scaled by powers of ``w`` (kept below 1e250), and only the
    carry between blocks is sequential.
    """
    out = np.array(y, dtype=np.float64, copy=True)
    if weight <= 0 or out.size == 0:
        return out
    finite = np.isfinite(out)
    values = out[finite]
    n = values.size
    smoothed = np.empty(n)
    block = max(1, min(4096, int(250 / -math.log10(weight))))
    k = np.arange(block, dtype=np.float64)
    rise, fall = weight ** -k, weight**k
    carry = 0.0
    for start in range(0, n, block):
        part = (1.0 - weight) * values[start:start + block]
        m = part.size
        smoothed[start:start + m] = fall[:m] * (np.cumsum(part * rise[:m]) + weight * carry)
        carry = smoothed[start + m - 1]
    head = min(n, int(40 / -math.log10(weight)) + 1)  # past it, 1 - w^n rounds to 1
    smoothed[:head] /= 1.0 - weight ** np.arange(1, head + 1, dtype=np.float64)
    out[finite] = smoothed
    return out


def downsample(x: np.ndarray, y: np.ndarray, buckets: int = BUCKETS) -> tuple[np.ndarray, np.ndarray]:
    """Finite points of (x, y), at most about ``4 * buckets`` of them: first, min, max and last per bucket.

    Buckets are runs of consecutive points (the series is in logging order); the last point is always the
    last bucket's last, so the tail is never lost.
    """
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = y.size
    if n <= 4 * buckets:
        return x, y
    size = -(-n // buckets)
    rows = -(-n // size)
    padded = np.full(rows * size, np.inf)
    padded[:n] = y
    grid = padded.reshape(rows, size)
    base = np.arange(rows) * size
    low = base + grid.argmin(axis=1)
    padded[n:] = -np.inf
    high = base + grid.argmax(axis=1)
    last = np.minimum(base + size - 1, n - 1)
    idx = np.unique(np.concatenate((base, low, high, last)))
    return x[idx], y[idx]


def spans_decades(values: list[np.ndarray], decades: float = 2.0) -> bool:
    """Whether positive data spans ``decades`` orders of magnitude: then a log scale shows it better."""
    finite = [v[np.isfinite(v)] for v in values]
    finite = [v for v in finite if v.size]
    if not finite:
        return False
    low = min(float(v.min()) for v in finite)
    high = max(float(v.max()) for v in finite)
    return low > 0 and high / low >= 10**decades


def base_name(name: str) -> str:
    """The training twin's name: ``validation_loss``, ``val/loss`` and ``train_loss`` all give ``loss``."""
    for prefix in (*VALIDATION_PREFIXES, *TRAIN_PREFIXES):
        if name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix):]
    return name


def is_validation(name: str) -> bool:
    return name.startswith(VALIDATION_PREFIXES)


def superseded(x: np.ndarray) -> np.ndarray:
    """Mask of the points to keep when a restarted attempt replays steps from its checkpoint.

    Where x drops (a new attempt resumed from an earlier step), the points an earlier attempt logged at or
    past that step are replaced by the replayed ones, so the curve never turns back on itself.
    """
    if x.size < 2:
        return np.ones(x.size, dtype=bool)
    starts = np.flatnonzero(np.diff(x) < 0) + 1
    if starts.size == 0:
        return np.ones(x.size, dtype=bool)
    segment = np.zeros(x.size, dtype=np.intp)
    segment[starts] = 1
    segment = np.cumsum(segment)
    later_min = np.minimum.accumulate(x[starts][::-1])[::-1]  # lowest start of this or any later segment
    limit = np.append(later_min, np.inf)[segment]  # for a point of segment k: starts of segments after k
    return x < limit
