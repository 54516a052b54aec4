"""The live panel: a pure rendering of a :class:`ViewState`, and the displays that show it.

:func:`render` is a pure function of a state snapshot and the clock, so it can be
tested on a recording console and called from Rich's refresh thread while the
readers keep applying events.  :class:`LivePanel` shows it under the script's
scrolling output on a terminal; :class:`StatusLines` is the non-terminal form:
the output untouched, and one plain status line every few seconds.
"""

from __future__ import annotations

import math
import time
from types import TracebackType
from typing import Self

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.rule import Rule
from rich.segment import SegmentLines
from rich.text import Text

from tlog.views.fmt import fmt_duration, fmt_mb, fmt_value
from tlog.views.viewstate import MetricStat, ViewState

SPARKS = "▁▂▃▄▅▆▇█"
MAX_METRICS = 12
MAX_RANK_LINES = 8  # beyond this many ranks, one line per node
NAME_WIDTH = 24
VALUE_WIDTH = 10
STATUS_STYLES = {"running": "green", "finished": "bold green", "restarting": "yellow", "starting": "cyan"}
STREAM_STYLES = {"stderr": "red", "tlog": "dim"}


# -- formatting ------------------------------------------------------------------------------------

def sparkline(values: list[float], width: int) -> str:
    """Unicode blocks scaled to the finite values; a NaN or infinity leaves a gap, never a fake level."""
    if width <= 0 or not values:
        return ""
    if len(values) > width:
        size = len(values) / width
        values = [_mean(values[int(i * size):int((i + 1) * size)]) for i in range(width)]
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return " " * len(values)
    low, high = min(finite), max(finite)
    if math.isclose(low, high, rel_tol=1e-9, abs_tol=1e-300):  # a constant, up to averaging noise
        return "".join("▄" if math.isfinite(v) else " " for v in values)
    span = high - low
    top = len(SPARKS) - 1
    return "".join(
        SPARKS[round((v - low) / span * top)] if math.isfinite(v) else " " for v in values
    )


def _mean(chunk: list[float]) -> float:
    return sum(chunk) / len(chunk) if chunk else math.nan


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _line(*parts: str | tuple[str, str]) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    for part in parts:
        if isinstance(part, str):
            text.append(part)
        else:
            text.append(*part)
    return text


def _bar(fraction: float, width: int) -> Text:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return Text("━" * filled, style="green").append("━" * (width - filled), style="grey30")


def _gauge(label: str, count: str, fraction: float | None, tail: str, inner: int) -> Text:
    """label, count, then a bar that takes what the width leaves (when the total is known), then the tail."""
    head = f"{label:<7}{count:>13} "
    if fraction is None:
        return _line(head, tail)
    pct = f" {fraction * 100:3.0f}% "
    width = max(8, min(60, inner - len(head) - len(pct) - len(tail)))
    text = _line(head)
    text.append_text(_bar(fraction, width))
    text.append(pct + tail)
    return text


# -- sections --------------------------------------------------------------------------------------

def _header(s: ViewState, now: float) -> list[Text]:
    status = s.status
    line = _line((f"● {status}", STATUS_STYLES.get(status, "bold red")))
    if s.attempt is not None:
        line.append(f"  attempt {s.attempt}" + (f" of {s.max_attempts}" if s.max_attempts else ""))
    if status == "restarting" and s.restart:
        delay = s.restart.get("delay_s")
        when = f" in {delay:.0f}s" if isinstance(delay, int | float) else ""
        line.append(f"  retry{when}: {s.restart.get('reason', 'n/a')}")
    elif s.exit_code is not None:
        line.append(f"  exit {s.exit_code}")
    line.append(f"  elapsed {fmt_duration(s.elapsed(now))}")
    if s.phase and status == "running":
        line.append(f"  phase {s.phase}")
    if s.hang_limit_s is not None and status == "running":
        line.append(f"  hang limit {fmt_duration(s.hang_limit_s)}")
    if s.host:
        line.append(f"  host {s.host}")
    if s.pid:
        line.append(f"  pid {s.pid}")
    return [_line(("$ ", "dim"), (s.command or "n/a", "bold")), line]


def _progress(s: ViewState, inner: int) -> list[Text]:
    rate = s.rate()
    running = s.status == "running"
    lines = []
    epoch, total = s.display_epoch, s.total_epochs
    done_in_epoch = s.batch / s.total_batches if s.batch is not None and s.total_batches else 0.0
    if epoch is not None:
        frac = (epoch - 1 + done_in_epoch) / total if total else None
        eta = _eta(s, rate, epochs_left=total - epoch) if running and total else ""
        lines.append(_gauge("epoch", f"{epoch}/{total}" if total else str(epoch), frac, eta, inner))
    rate_text = f"{rate:.3g} step/s" if rate is not None else "n/a step/s"
    step_text = f"step {s.step}  " if s.step is not None else ""
    if s.batch is not None:
        tb = s.total_batches
        eta = _eta(s, rate, epochs_left=0) if running and tb else ""
        tail = f"{rate_text}  {step_text}{eta}".rstrip()
        count = f"{s.batch}/{tb}" if tb else str(s.batch)
        lines.append(_gauge("batch", count, s.batch / tb if tb else None, tail, inner))
    elif s.step is not None:
        lines.append(_line(f"{'step':<7}{s.step:>13}  {rate_text}"))
    return lines


def _eta(s: ViewState, rate: float | None, epochs_left: int) -> str:
    """Time to the end of this epoch plus the epochs after it, at the recent rate."""
    if not rate or not s.total_batches or s.batch is None:
        return "ETA n/a"
    left = max(0, s.total_batches - s.batch) + max(0, epochs_left) * s.total_batches
    return f"ETA {fmt_duration(left / rate)}"


def _metrics(s: ViewState, inner: int) -> list[Text]:
    if not s.metrics:
        return [_line(("metrics n/a", "dim"))]
    items = sorted(s.metrics.items(), key=lambda kv: "loss" not in kv[0].lower())[:MAX_METRICS]
    name_w = min(NAME_WIDTH, max(len(name) for name, _ in items))
    spark_w = max(0, min(64, inner - name_w - 2 * VALUE_WIDTH - 4))
    head = f"{'metric':<{name_w}} {'latest':>{VALUE_WIDTH}} {'best':>{VALUE_WIDTH}}  trend"
    lines = [_line((head, "dim"))]
    lines.extend(_metric_line(name, stat, name_w, spark_w) for name, stat in items)
    if len(s.metrics) > MAX_METRICS:
        lines.append(_line((f"… {len(s.metrics) - MAX_METRICS} more", "dim")))
    return lines


def _metric_line(name: str, stat: MetricStat, name_w: int, spark_w: int) -> Text:
    label = name if len(name) <= name_w else name[: name_w - 1] + "…"
    best = fmt_value(stat.best) if stat.lower_is_better is not None else ""
    return _line(
        f"{label:<{name_w}} ",
        (f"{fmt_value(stat.last):>{VALUE_WIDTH}}", "bold"),
        f" {best:>{VALUE_WIDTH}}  ",
        (sparkline(stat.trend(), spark_w), "cyan"),
    )


def _resources(s: ViewState, inner: int) -> list[Text]:
    sysd = s.system
    if not sysd:
        return [_line(f"{'RAM':<7}{'n/a':>13}")]
    rss, limit = _number(sysd.get("rss_mb")), _number(sysd.get("mem_limit_mb"))
    extras = [f"peak {fmt_mb(_number(sysd.get('rss_peak_mb')))}"]
    if "headroom_mb" in sysd:
        extras.append(f"headroom {fmt_mb(_number(sysd['headroom_mb']))}")
    if "cpu_percent" in sysd:
        extras.append(f"cpu {fmt_value(_number(sysd['cpu_percent']))}%")
    count = f"{fmt_mb(rss)} / {fmt_mb(limit)}"
    frac = rss / limit if rss is not None and limit else None
    lines = [_gauge("RAM", count, frac, "  ".join(extras), inner)]
    for gpu in _gpu_ids(sysd):
        used, total = _number(sysd.get(f"{gpu}_used_mb")), _number(sysd.get(f"{gpu}_total_mb"))
        extras = [f"peak {fmt_mb(_number(sysd.get(f'{gpu}_peak_mb')))}"]
        if f"{gpu}_util" in sysd:
            extras.append(f"util {fmt_value(_number(sysd[f'{gpu}_util']))}%")
        frac = used / total if used is not None and total else None
        lines.append(_gauge(gpu.upper(), f"{fmt_mb(used)} / {fmt_mb(total)}", frac, "  ".join(extras), inner))
    return lines


def _gpu_ids(sysd: dict) -> list[str]:
    ids = [key[: -len("_used_mb")] for key in sysd if key.startswith("gpu") and key.endswith("_used_mb")]
    return sorted(ids, key=lambda gid: int(gid[3:]) if gid[3:].isdigit() else 0)


def _ranks(s: ViewState) -> list[Text]:
    """A line per rank (per node beyond MAX_RANK_LINES ranks): its step, loss and memory, and who failed."""
    if len(s.ranks) < 2:
        return []
    if len(s.ranks) <= MAX_RANK_LINES:
        groups = {f"rank {rank}": [rank] for rank in sorted(s.ranks)}
    else:
        groups = {}
        for rank in sorted(s.ranks):
            info = s.ranks[rank]
            where = f"node {info['node']}" if info.get("node") is not None else str(info.get("host") or "node ?")
            groups.setdefault(where, []).append(rank)
    lines = []
    for label, members in groups.items():
        infos = [s.ranks[r] for r in members]
        steps = sorted({i["step"] for i in infos if i.get("step") is not None})
        step = "n/a" if not steps else str(steps[0]) if len(steps) == 1 else f"{steps[0]}-{steps[-1]}"
        rss = [i["rss_mb"] for i in infos if isinstance(i.get("rss_mb"), (int, float))]
        who = label if len(members) == 1 else f"{label} ranks {members[0]}-{members[-1]}"
        parts = [f"{who:<16}", f"step {step:<10}"]
        if len(members) == 1 and infos[0].get("loss") is not None:
            parts.append(f"loss {fmt_value(infos[0]['loss']):<10}")
        parts.append(f"RAM {fmt_mb(sum(rss)) if rss else 'n/a'}")
        line = _line(*parts)
        failed = [r for r in members if "failed" in s.ranks[r]]
        root = s.failed_rank if s.failed_rank in members else (failed[0] if failed else None)
        if root is not None:
            first = " first" if root == s.failed_rank else ""
            line.append(f"  ✗ failed{first}" if len(members) == 1 else f"  ✗ rank {root} failed{first}",
                        style="bold red")
        lines.append(line)
    return lines


def _problems(s: ViewState) -> list[Text]:
    lines = []
    for label, counts, last, style in (("errors", s.errors, s.last_error, "red"),
                                       ("warnings", s.warnings, s.last_warning, "yellow")):
        if counts:
            summary = "  ".join(f"{cat} ×{n}" for cat, n in counts.items())
            lines.append(_line((f"{label:<9}", style), summary, ("  last: ", "dim"), last or ""))
    if s.crash:
        lines.append(_line((f"{'crash':<9}", "bold red"), s.crash))
    if not lines:
        lines.append(_line(("no errors or warnings", "dim")))
    if s.checkpoints and s.last_checkpoint is not None:
        ckpt = s.last_checkpoint
        size = _number(ckpt.get("bytes"))
        size_text = f" ({fmt_mb(size / 2**20)})" if size is not None else ""
        lines.append(_line(f"{'ckpts':<9}{s.checkpoints}  newest {ckpt.get('path', 'n/a')}{size_text}"))
    return lines


def _output(s: ViewState, count: int) -> list[RenderableType]:
    if count <= 0 or not s.output:
        return []
    lines: list[RenderableType] = [Rule("output", style="dim", characters="─")]
    for stream, raw in list(s.output)[-count:]:
        text = Text.from_ansi(raw, no_wrap=True) if "\x1b" in raw else Text(raw, no_wrap=True)
        text.overflow = "ellipsis"
        text.stylize(STREAM_STYLES.get(stream, ""))
        lines.append(text)
    return lines


def render(state: ViewState, width: int, now: float | None = None, *,
           output_lines: int = 8) -> RenderableType:
    """The whole panel for a terminal ``width`` columns wide (80 and up), from one consistent snapshot."""
    s = state.snapshot()
    now = time.time() if now is None else now
    inner = max(20, width - 4)
    rows: list[RenderableType] = [*_header(s, now), *_progress(s, inner), *_metrics(s, inner)]
    rows += [*_resources(s, inner), *_ranks(s), *_problems(s), *_output(s, output_lines)]
    title = Text(f" tlog · {s.name or 'n/a'} ", style="bold")
    return Panel(Group(*rows), title=title, title_align="left", width=width, padding=(0, 1))


def status_line(state: ViewState, now: float | None = None) -> str:
    """One plain line for logs and pipes: ``[tlog] exp step 1200 epoch 3/10 loss 0.412 rss 812 MB ...``."""
    s = state.snapshot()
    parts = ["[tlog]", s.name or "n/a"]
    if s.status != "running":
        parts.append(s.status)
    if s.step is not None:
        parts.append(f"step {s.step}")
    if s.display_epoch is not None:
        total = f"/{s.total_epochs}" if s.total_epochs else ""
        parts.append(f"epoch {s.display_epoch}{total}")
    name = "loss" if "loss" in s.metrics else next(iter(s.metrics), None)
    if name is not None:
        parts.append(f"{name} {fmt_value(s.metrics[name].last)}")
    rss = _number(s.system.get("rss_mb"))
    if rss is not None:
        parts.append(f"rss {fmt_mb(rss)}")
    parts.append(f"elapsed {fmt_duration(s.elapsed(now))}")
    return " ".join(parts)


# -- displays --------------------------------------------------------------------------------------

def _record(state: ViewState, stream: str, text: str) -> None:
    if "\n" in text.rstrip("\n"):
        for line in text.splitlines():
            state.apply_output(stream, line)
    else:
        state.apply_output(stream, text)


class LivePanel:
    """The panel pinned under the script's output on a terminal, redrawn at a fixed rate.

    Each refresh renders the panel once into segments; Rich redraws the live
    region after every printed line, and replaying segments keeps that redraw
    cheap when the script prints thousands of lines a second.
    """

    def __init__(self, state: ViewState, console: Console, refresh_per_second: float = 4.0,
                 output_lines: int = 8) -> None:
        self.state = state
        self.console = console
        self.output_lines = output_lines
        self._live = Live(get_renderable=self._frame, refresh_per_second=refresh_per_second,
                          console=console, transient=False, redirect_stdout=False)

    def _frame(self) -> RenderableType:
        console = self.console
        panel = render(self.state, console.width, output_lines=self.output_lines)
        return SegmentLines(console.render_lines(panel, console.options, pad=False), new_lines=True)

    def print_output(self, stream: str, text: str) -> None:
        """Record one or more lines of the script's output and print them above the panel, untouched.

        Rich redraws the panel after each print, so passing the lines read
        together in one call costs one redraw instead of one per line.
        """
        _record(self.state, stream, text)
        body = text[:-1] if text.endswith("\n") else text
        renderable = Text.from_ansi(body) if "\x1b" in body else body
        self.console.print(renderable, markup=False, highlight=False, emoji=False, soft_wrap=True)

    def __enter__(self) -> Self:
        self._live.start(refresh=True)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._live.stop()
