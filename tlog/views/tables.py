"""Text reports: summary, errors, experiment list (Rich tables on the terminal)."""

from __future__ import annotations

import math
import time
from typing import Any

from rich.console import Console
from rich.table import Table


def fmt_num(value: Any) -> str:
    """Numbers as a person reads them; missing values as 'n/a', never as zero."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    mag = abs(value)
    return f"{value:.3e}" if mag < 1e-3 or mag >= 1e6 else f"{value:.4g}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def fmt_time(t: float | None) -> str:
    return "n/a" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def print_summary(s: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    status = s.get("status", "unknown")
    restarts = s.get("restarts") or 0
    if restarts:
        status += f" (after {restarts} restart{'s' if restarts > 1 else ''})"
    console.print(f"[bold]{s.get('experiment')}[/bold]  {status}", highlight=False)
    facts = [("started", fmt_time(s.get("started"))), ("duration", fmt_duration(s.get("duration_s"))),
             ("steps", fmt_num(s.get("steps"))), ("epochs", fmt_num(s.get("epochs"))),
             ("command", " ".join(s.get("command") or []) or "n/a"), ("path", s.get("path", "n/a"))]
    for key, value in facts:
        console.print(f"  {key:<9} {value}", highlight=False, markup=False)
    _metrics_table(s.get("metrics", {}), console)
    peaks = s.get("resources", {}).get("peaks") or {}
    if peaks:
        console.print("  peaks    " + ", ".join(f"{k} {fmt_num(v)}" for k, v in sorted(peaks.items())),
                      highlight=False, markup=False)
    ckpt = s.get("checkpoints") or {}
    if ckpt.get("count"):
        newest = ckpt.get("newest") or {}
        console.print(f"  checkpoints {ckpt['count']}, newest {newest.get('path')} "
                      f"(step {fmt_num(newest.get('step'))})", highlight=False, markup=False)
    errs = s.get("errors") or {}
    if errs.get("count"):
        cats = ", ".join(f"{k} {v}" for k, v in errs.get("by_category", {}).items())
        console.print(f"  errors   {errs['count']} ({cats})", highlight=False, markup=False)
        for item in errs.get("items", [])[-5:]:
            console.print(f"    - [{item.get('category')}] {item.get('cause') or item.get('error_message')}",
                          highlight=False, markup=False)
    warns = s.get("warnings") or {}
    if warns.get("count"):
        cats = ", ".join(f"{k} {v}" for k, v in warns.get("by_category", {}).items())
        console.print(f"  warnings {warns['count']} ({cats})", highlight=False, markup=False)


def _metrics_table(metrics: dict[str, dict], console: Console) -> None:
    if not metrics:
        console.print("  no metrics recorded", highlight=False)
        return
    table = Table(box=None, pad_edge=False, padding=(0, 2))
    for col in ("metric", "last", "best", "best step", "min", "max", "count"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, m in metrics.items():
        table.add_row(name, fmt_num(m.get("last")), fmt_num(m.get("best")) if m.get("mode") else "",
                      fmt_num(m.get("best_step")) if m.get("mode") else "", fmt_num(m.get("min")),
                      fmt_num(m.get("max")), fmt_num(m.get("count")))
    console.print(table)


def print_errors(rows: list[dict[str, Any]], show_experiment: bool = False, console: Console | None = None) -> None:
    console = console or Console()
    if not rows:
        console.print("no errors recorded")
        return
    for err in rows:
        where = " ".join(f"{k} {err[k]}" for k in ("epoch", "batch", "step") if err.get(k) is not None)
        head = f"{err.get('timestamp', '')}  [{err.get('category')}] phase {err.get('phase')}"
        if show_experiment:
            head = f"{err.get('experiment')}  " + head
        if err.get("attempt"):
            head += f"  attempt {err['attempt']}"
        console.print(head + (f"  ({where})" if where else ""), highlight=False, markup=False)
        console.print(f"    {err.get('cause') or err.get('error_message')}", highlight=False, markup=False)


def print_list(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    console = console or Console()
    if not rows:
        console.print("no experiments")
        return
    table = Table(box=None, pad_edge=False, padding=(0, 2))
    for col in ("experiment", "status", "started", "duration", "steps", "best loss", "errors"):
        table.add_column(col, justify="left" if col in ("experiment", "status", "started") else "right")
    for r in rows:
        table.add_row(r["experiment"], str(r["status"]), fmt_time(r["started"]), fmt_duration(r["duration_s"]),
                      fmt_num(r["steps"]), fmt_num(r["best_loss"]), str(r["errors"]))
    console.print(table)
