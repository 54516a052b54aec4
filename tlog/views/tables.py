"""Text reports: summary, errors, experiment list, comparison.

Everything fits 80 columns: names are never cut (a long one wraps), numbers keep four significant digits in
at most nine characters, and a missing value reads 'n/a', never zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tlog.direction import constant_setting
from tlog.report import LIVE, flatten
from tlog.views.fmt import fmt_duration, fmt_num, fmt_time
from tlog.views.ranks import error_rank_lines, print_ranks

VALIDATION_PREFIXES = ("validation_", "val_", "eval_", "test_")


def status_text(s: dict[str, Any]) -> str:
    """'finished', 'finished after 2 restarts', 'interrupted (no supervisor left)', 'running (attempt 2)'."""
    status = s.get("status") or "unknown"
    restarts = s.get("restarts") or 0
    if restarts:
        status += f" after {restarts} restart{'s' if restarts > 1 else ''}" if status not in LIVE else \
            f" (attempt {restarts + 1})"
    if s.get("status") == "interrupted":
        status += " (its supervisor is gone)"
    if s.get("stop_reason"):
        status += f": {s['stop_reason']}"
    return status


def _say(console: Console, text: str) -> None:
    """Plain text, never Rich markup, and no line breaks inserted: long lines stay greppable."""
    console.print(text, highlight=False, markup=False, soft_wrap=True)


def _line(console: Console, key: str, value: str) -> None:
    _say(console, f"  {key:<11} {value}")


def print_summary(s: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    console.print(Text.assemble((str(s.get("experiment")), "bold"), f"  {status_text(s)}"))
    _line(console, "started", f"{fmt_time(s.get('started'))}   duration {fmt_duration(s.get('duration_s'))}")
    steps = f"{fmt_num(s.get('steps'))}   epochs {fmt_num(s.get('epochs'))}"
    if s.get("steps_per_s"):
        steps += f"   throughput {fmt_num(s['steps_per_s'])} steps/s"
    _line(console, "steps", steps)
    _line(console, "command", " ".join(s.get("command") or []) or "n/a")
    _line(console, "path", s.get("path", "n/a"))
    _metrics_table(s.get("metrics", {}), console)
    spike = s.get("spike")
    if spike and spike.get("ratio", 0) > 1:
        _line(console, "spike", f"{spike['metric']} {fmt_num(spike['value'])} at step {fmt_num(spike['step'])}, "
                                f"{fmt_num(spike['ratio'])}x its running median {fmt_num(spike['median'])}")
    _resources(s.get("resources", {}).get("peaks") or {}, console)
    print_ranks(s, console)
    ckpt = s.get("checkpoints") or {}
    if ckpt.get("count"):
        newest = ckpt.get("newest") or {}
        _line(console, "checkpoints", f"{ckpt['count']}, newest {newest.get('path')} "
                                      f"(step {fmt_num(newest.get('step'))})")
    _errors(s.get("errors") or {}, console)
    warns = s.get("warnings") or {}
    if warns.get("count"):
        cats = ", ".join(f"{k} {v}" for k, v in warns.get("by_category", {}).items())
        _line(console, "warnings", f"{warns['count']} ({cats})")
    config = {k: v for k, v in user_config(s.get("config") or {}).items() if not k.startswith(_CAPTURED_DETAIL)}
    if config:
        shown = list(config.items())[:CONFIG_SHOWN]
        more = f" ... and {len(config) - len(shown)} more (--json for all)" if len(config) > len(shown) else ""
        _line(console, "config", ", ".join(f"{k}={v}" for k, v in shown) + more)
    notes = []
    if s.get("malformed_lines"):
        notes.append(f"{s['malformed_lines']} malformed line(s) of events.jsonl skipped")
    if s.get("partial_tail"):
        notes.append("the last line of events.jsonl is half-written (ignored)")
    if notes:
        _line(console, "note", "; ".join(notes))


# What the probe captured about the machine and the optimizer's every default: in --json, not in the text view.
_CAPTURED_DETAIL = ("environment.", "git.", "data.", "optimizer.foreach", "optimizer.capturable",
                    "optimizer.differentiable", "optimizer.fused", "optimizer.maximize", "optimizer.amsgrad",
                    "optimizer.decoupled_weight_decay", "model.trainable", "model.dtype")
CONFIG_SHOWN = 16


def user_config(config: dict[str, Any]) -> dict[str, Any]:
    """The script's configuration, flattened, without tlog's own run options and command line."""
    return flatten({k: v for k, v in config.items() if k not in ("tlog", "command")})


def _metrics_table(metrics: dict[str, dict], console: Console) -> None:
    if not metrics:
        _line(console, "metrics", "none recorded")
        return
    table = Table(box=None, padding=(0, 0, 0, 2), show_edge=False)
    table.add_column("metric", no_wrap=True)
    for col in ("last", "best", "at step", "min", "max"):
        table.add_column(col, justify="right", no_wrap=True)
    constant = {n: m for n, m in metrics.items()
                if constant_setting(m.get("mode"), m.get("min"), m.get("max"), m.get("count") or 0)}
    metrics = {n: m for n, m in metrics.items() if n not in constant}
    training = [n for n in metrics if not n.startswith(VALIDATION_PREFIXES)]
    validation = [n for n in metrics if n.startswith(VALIDATION_PREFIXES)]
    for names in (training, validation):
        for name in names:
            m = metrics[name]
            best = m.get("mode") is not None
            table.add_row(escape(name), fmt_num(m.get("last")), fmt_num(m.get("best")) if best else "",
                          fmt_num(m.get("best_step")) if best else "", fmt_num(m.get("min")), fmt_num(m.get("max")))
        if names is training and validation and training:
            table.add_section()
    if metrics:
        console.print(table)
    if constant:
        _line(console, "constant", ", ".join(f"{n}={fmt_num(m.get('last'))}" for n, m in constant.items()))


def _resources(peaks: dict[str, Any], console: Console) -> None:
    if "rss_mb" in peaks:
        ram = f"{fmt_num(peaks['rss_mb'])} MB peak"
        if peaks.get("mem_limit_mb"):
            ram += f" of {fmt_num(peaks['mem_limit_mb'])} MB"
        if peaks.get("headroom_min_mb") is not None:
            ram += f", lowest headroom {fmt_num(peaks['headroom_min_mb'])} MB"
        _line(console, "RAM", ram)
    gpus = sorted({k.split("_")[0] for k in peaks if k.startswith("gpu")})
    for gpu in gpus:
        used, total = peaks.get(f"{gpu}_max_mb"), peaks.get(f"{gpu}_total_mb")
        _line(console, gpu.upper(), f"{fmt_num(used)} MB peak" + (f" of {fmt_num(total)} MB" if total else ""))


def _errors(errs: dict[str, Any], console: Console) -> None:
    if not errs.get("count"):
        return
    cats = ", ".join(f"{k} {v}" for k, v in errs.get("by_category", {}).items())
    _line(console, "errors", f"{errs['count']} ({cats})")
    causes: dict[str, list[str]] = {}
    for item in errs.get("items", []):
        cause = item.get("cause") or item.get("error_message") or "no cause recorded"
        seen = causes.setdefault(item.get("category") or "unknown", [])
        if cause not in seen:
            seen.append(cause)
    for category, texts in causes.items():
        for text in texts[-3:]:
            _say(console, f"    - [{category}] {text}")


def print_errors(rows: list[dict[str, Any]], show_experiment: bool = False, traceback: bool = False,
                 console: Console | None = None) -> None:
    console = console or Console()
    if not rows:
        console.print("no errors recorded")
        return
    for err in rows:
        where = ", ".join(f"{k} {fmt_num(err[k])}" for k in ("step", "epoch", "batch") if err.get(k) is not None)
        head = [err.get("experiment") if show_experiment else None, err.get("timestamp"),
                f"[{err.get('category')}]", f"phase {err.get('phase')}",
                f"attempt {err['attempt']}" if err.get("attempt") else None, f"({where})" if where else None,
                f"rank {err['rank']}" if err.get("rank") is not None else None,
                f"node {err['node']}" if err.get("node") is not None else None]
        _say(console, "  ".join(h for h in head if h))
        _say(console, f"    {err.get('cause') or err.get('error_message')}")
        if err.get("remedy"):
            _say(console, f"    remedy: {err['remedy']}")
        for line in error_rank_lines(err):
            _say(console, line)
        if err.get("recovery_attempted"):
            outcome = "recovered" if err.get("recovery_successful") else "not recovered"
            secs = err.get("recovery_time")
            _say(console, f"    recovery: {outcome}" + (f" after {secs:.1f} s" if isinstance(secs, (int, float))
                                                         else ""))
        if traceback and err.get("traceback"):
            for line in str(err["traceback"]).rstrip().splitlines():
                _say(console, f"      {line}")


def print_list(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    console = console or Console()
    if not rows:
        console.print("no experiments")
        return
    table = Table(box=None, pad_edge=False, padding=(0, 0, 0, 2), show_edge=False)
    table.add_column("experiment", overflow="fold", ratio=1)
    table.add_column("status", no_wrap=True)
    for col in ("started", "duration", "steps", "best loss", "errors"):
        table.add_column(col, justify="left" if col == "started" else "right", no_wrap=True)
    for r in rows:
        status = str(r["status"]) + (f"+{r['restarts']}r" if r.get("restarts") else "")
        table.add_row(escape(r["experiment"]), status, fmt_time(r["started"], short=True),
                      fmt_duration(r["duration_s"]), fmt_num(r["steps"]), fmt_num(r["best_loss"]), str(r["errors"]))
    console.print(table)


def print_compare(c: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(box=None, pad_edge=False, padding=(0, 0, 0, 2), show_edge=False)
    table.add_column("", overflow="fold", ratio=1)
    for name in c["experiments"]:
        table.add_column(name, justify="right", overflow="fold")
    for key, values in c["facts"].items():
        fmt = fmt_duration if key == "duration_s" else fmt_num
        table.add_row(key.removesuffix("_s") if key == "duration_s" else key, *(fmt(v) for v in values))
    table.add_section()
    for name, per_exp in c["metrics"].items():
        table.add_row(escape(f"{name} last"), *(fmt_num(m["last"]) if m else "-" for m in per_exp))
        if any(m and m.get("mode") for m in per_exp):
            table.add_row(escape(f"{name} best"), *(_best(m) for m in per_exp))
    differs = c["config"]["differs"]
    if differs:
        table.add_section()
        for key, values in differs.items():
            table.add_row(escape(key), *("-" if v is None else escape(_short(v)) for v in values))
    console.print(table)
    console.print(f"config: {len(differs)} key(s) differ, {c['config']['same']} identical", highlight=False)


def _best(m: dict | None) -> str:
    if not m or m.get("best") is None:
        return "-"
    return f"{fmt_num(m['best'])} @{fmt_num(m.get('best_step'))}"


def _short(value: Any) -> str:
    text = " ".join(map(str, value)) if isinstance(value, list) else fmt_num(value)
    return text if len(text) <= 40 else text[:39] + "…"


def print_settings(result: dict[str, Any], console: Console | None = None) -> None:
    """``tlog config show``: each setting, its value, and the file (or default, or variable) it comes from."""
    console = console or Console()
    files = result["files"]
    _say(console, "settings files: " + (", ".join(files) if files else "none (built-in defaults)"))
    table = Table(box=None, padding=(0, 0, 0, 2), show_edge=False)
    table.add_column("setting", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("from", no_wrap=True)
    for key, row in result["settings"].items():
        value, source = row["value"], row["source"]
        shown = "n/a" if value is None else escape(str(value))
        table.add_row(key, shown, Path(source).name if "/" in source else source)
    console.print(table)
