"""How numbers, sizes and durations read in every view: one place, so the panel and the reports agree.

A missing value reads "n/a", never zero.
"""

from __future__ import annotations

import math
import time
from typing import Any


def fmt_value(value: float | None) -> str:
    if value is None:
        return "n/a"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.4g}"


def fmt_mb(mb: float | None) -> str:
    if mb is None:
        return "n/a"
    return f"{mb:.0f} MB" if mb < 1024 else f"{mb / 1024:.1f} GB"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    total = int(seconds)
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def fmt_num(value: Any) -> str:
    """Numbers as a person reads them; missing values as 'n/a', never as zero."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    mag = abs(value)
    if 1e3 <= mag < 1e6:
        return f"{value:,.0f}"
    return f"{value:.3e}" if mag < 1e-3 or mag >= 1e6 else f"{value:.4g}"


def fmt_time(t: float | None, short: bool = False) -> str:
    if t is None:
        return "n/a"
    return time.strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S", time.localtime(t))
