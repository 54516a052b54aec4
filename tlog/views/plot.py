"""``tlog plot``: training curves of one or several runs in one figure, fast at any length.

Panels, top to bottom: each metric family (loss, accuracy, learning rate, then the others) with its
validation twin on the same axes (dashed), throughput as one panel, then RAM and GPU memory.  Several
experiments share the panels, one colour each.  A noisy curve is drawn faint, with its smoothed version
(TensorBoard's debiased EMA) over it; learning rates and memory are drawn as they are; a short series gets
markers.  Errors are red dashed lines, restarts grey dotted ones, checkpoint saves green dotted ones, epoch
boundaries faint grey.  Data comes from the columns (``tlog.store.columns``), never from a per-event parse,
and every line is downsampled so that spikes and the last point survive (``tlog.views.series``).

``build_figure`` returns the matplotlib Figure without saving it, so tests read back exactly what is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlog.direction import constant_setting, metric_mode
from tlog.store import columns as cols
from tlog.store import layout, safefile
from tlog.views import series as S

FORMATS = ("png", "svg", "pdf")
MAX_PANELS = 6
FIRST = ("loss", "accuracy", "acc", "learning_rate", "lr")
THROUGHPUT = ("steps_per_s", "samples_per_s")  # one panel: steps/s, samples/s on a second axis
FEW_POINTS = 50  # up to this many points a line gets markers (one sample would be invisible without)
MAX_LINES = 40  # more epoch or checkpoint lines than this would grey the whole panel: not drawn
UNSMOOTHED = ("learning_rate", "lr", "momentum")
X_COLUMN = {"step": cols.Columns.STEP, "epoch": cols.Columns.EPOCH, "time": cols.Columns.T}


class PlotError(ValueError):
    """A bad request (unknown metric, unsupported format): shown to the user as one line."""


@dataclass
class PlotOptions:
    metrics: list[str] | None = None
    smoothing: float = 0.6
    x: str = "step"
    figure_size: tuple[float, float] | None = None
    dpi: float = 100
    save_format: str = "png"
    buckets: int = S.BUCKETS
    notes: list[str] = field(default_factory=list)
    ranks: tuple[int, ...] | None = None  # --ranks: one curve per rank (() for every rank); None: rank 0's


@dataclass
class _Run:
    name: str
    columns: cols.Columns
    color: str


def build_figure(exp_dirs: list[Path], opts: PlotOptions):  # -> matplotlib.figure.Figure
    """The figure of ``exp_dirs`` (overlaid), not saved."""
    if opts.x not in X_COLUMN:
        raise PlotError(f"unknown x axis {opts.x!r}: use step, epoch or time")
    runs = _runs(exp_dirs, opts)
    groups = _groups(runs, opts)
    from matplotlib.figure import Figure  # after the checks: a bad request fails without its import time

    memory = [name for name in dict.fromkeys(n for r in runs for n in r.columns.system) if _memory_line(name)]
    panels = len(groups) + (1 if memory else 0)
    if panels == 0:
        raise PlotError("nothing to plot: no metrics recorded yet")
    fig = Figure(figsize=opts.figure_size or (12.0, 2.6 * panels + 0.8), dpi=opts.dpi)
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    names = ", ".join(r.name for r in runs)
    fig.suptitle(f"Training progress - {names}" if len(runs) == 1 else f"Training progress: {names}")
    drawing = _Drawing(runs, opts)
    for ax, (family, members) in zip(axes, groups.items(), strict=False):
        drawing.metric_panel(ax, family, members)
    if memory:
        drawing.memory_panel(axes[-1], memory)
    for ax in axes:
        drawing.markers(ax, label=ax is axes[0])
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel(f"time since start ({drawing.unit})" if opts.x == "time" else opts.x)
    if opts.x == "step":
        axes[-1].xaxis.set_major_formatter(_step_label)
    width, height = fig.get_size_inches()  # fixed margins in inches: tight_layout would cost a full draw
    fig.subplots_adjust(left=0.9 / width, right=1 - 0.25 / width, top=1 - 0.95 / height, bottom=0.6 / height,
                        hspace=0.55 * panels / max(height - 1.55, 1.0))
    return fig


def _step_label(value: float, _pos: int) -> str:
    """1,500 as 1.5k and 1,000,000 as 1M: no offset text to read in the corner."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def write_plot(exp_dirs: list[Path], output: Path | None, opts: PlotOptions) -> Path:
    """Draw and save; the format comes from the extension of ``output`` (default: the settings' format)."""
    out = output or _default_output(exp_dirs, opts.save_format)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise PlotError(f"cannot write {out.name!r}: use a .png, .svg or .pdf file")
    fig = build_figure(exp_dirs, opts)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with safefile.replacing(out) as f:
            # zlib level 1: a third of the default level's encoding time for a slightly larger file
            fig.savefig(f, format=fmt, **({"pil_kwargs": {"compress_level": 1}} if fmt == "png" else {}))
    except OSError as exc:
        raise PlotError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


def _default_output(exp_dirs: list[Path], fmt: str) -> Path:
    stem = "training_progress" if len(exp_dirs) == 1 else "compare_" + "_".join(d.name for d in exp_dirs[1:])
    return exp_dirs[0] / layout.PLOTS / f"{stem[:120]}.{fmt.lower()}"


def parse_ranks(text: str) -> tuple[int, ...]:
    """``--ranks``: 'all' (every rank that logged) or a comma list such as '0,3'."""
    if text.strip() == "all":
        return ()
    try:
        ranks = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        ranks = ()
    if not ranks or min(ranks) < 0:
        raise PlotError(f"--ranks takes 'all' or ranks separated by commas (0,3), not {text!r}")
    return ranks


def _runs(exp_dirs: list[Path], opts: PlotOptions) -> list[_Run]:
    """One line set per experiment, or with ``--ranks`` one per rank of each (a straggler or a diverging
    rank stands out against the others)."""
    if opts.ranks is None:
        return [_Run(_label(d, exp_dirs), cols.read(d), f"C{i % 10}") for i, d in enumerate(exp_dirs)]
    runs: list[_Run] = []
    for d in exp_dirs:
        per_rank = cols.read_ranks(d, list(opts.ranks) or None)
        logged = [rank for rank, c in per_rank.items() if c.metrics]
        missing = [rank for rank in opts.ranks if rank not in logged]
        if missing or not logged:
            asked = ", ".join(map(str, missing)) if missing else "any"
            raise PlotError(f"no metrics of rank {asked} in {d.name}; ranks "
                            f"that logged: {', '.join(map(str, logged)) or 'none (not a distributed run?)'}")
        prefix = "" if len(exp_dirs) == 1 else f"{_label(d, exp_dirs)} "
        runs += [_Run(f"{prefix}rank {rank}", per_rank[rank], f"C{(len(runs) + i) % 10}")
                 for i, rank in enumerate(sorted(per_rank)) if rank in logged or rank == min(per_rank)]
    return runs


def _label(exp_dir: Path, all_dirs: list[Path]) -> str:
    return exp_dir.name if [d.name for d in all_dirs].count(exp_dir.name) == 1 else str(exp_dir)


def _groups(runs: list[_Run], opts: PlotOptions) -> dict[str, list[str]]:
    """Metric families to draw: {base name: [members]}, training twin first, FIRST families first."""
    available = list(dict.fromkeys(n for r in runs for n in r.columns.metrics))
    wanted = available
    if opts.metrics:
        unknown = [m for m in opts.metrics if m not in available]
        if unknown:
            raise PlotError(f"no metric {', '.join(map(repr, unknown))} in {', '.join(r.name for r in runs)}; "
                            f"recorded: {', '.join(available) or 'none'}")
        bases = {S.base_name(m) for m in opts.metrics}
        wanted = [m for m in available if m in opts.metrics or S.base_name(m) in bases]
    else:  # a value that never moved (Adam's betas, a fixed momentum) is a fact for the summary, not a curve
        flat = [m for m in available if _constant(runs, m)]
        if flat:
            opts.notes.append(f"constant, not drawn: {', '.join(flat)} (choose with --metric)")
            wanted = [m for m in available if m not in flat]
    groups: dict[str, list[str]] = {}
    for name in wanted:
        groups.setdefault("throughput" if name in THROUGHPUT else S.base_name(name), []).append(name)
    order = sorted(groups, key=lambda b: (FIRST.index(b) if b in FIRST else len(FIRST), b))
    if len(order) > MAX_PANELS:
        opts.notes.append(f"{len(order) - MAX_PANELS} more metric(s) not drawn ({', '.join(order[MAX_PANELS:])}); "
                          f"choose with --metric")
        order = order[:MAX_PANELS]
    return {b: sorted(groups[b], key=lambda m: (S.is_validation(m), m in THROUGHPUT[1:])) for b in order}


def _constant(runs: list[_Run], name: str) -> bool:
    values = [r.columns.get(name)[:, cols.Columns.VALUE] for r in runs if name in r.columns.metrics]
    finite = [v[~np.isnan(v)] for v in values if len(v)]
    finite = [v for v in finite if len(v)]
    if not finite:
        return False
    low, high = min(float(v.min()) for v in finite), max(float(v.max()) for v in finite)
    return constant_setting(metric_mode(name), low, high, sum(len(v) for v in finite))


def _points(y: np.ndarray) -> dict[str, Any]:
    return {"marker": "o" if len(y) <= FEW_POINTS else None, "markersize": 3}


class _Drawing:
    """Draws the runs' series into axes, all against one x axis (time in one unit for every run)."""

    def __init__(self, runs: list[_Run], opts: PlotOptions) -> None:
        self.runs, self.opts = runs, opts
        span = max((_last_t(r.columns) - (r.columns.t0 or 0.0) for r in runs), default=0.0)
        self.scale, self.unit = (3600.0, "h") if span > 3 * 3600 else (60.0, "min") if span > 180 else (1.0, "s")

    def xy(self, run: _Run, name: str) -> tuple[np.ndarray, np.ndarray]:
        data = run.columns.get(name)
        x, y = data[:, X_COLUMN[self.opts.x]], data[:, cols.Columns.VALUE]
        if self.opts.x == "time":
            return (x - (run.columns.t0 or 0.0)) / self.scale, y
        keep = S.superseded(x)
        return x[keep], y[keep]

    def metric_panel(self, ax: Any, family: str, members: list[str]) -> None:
        drawn = []
        opts = self.opts
        smooth = opts.smoothing if family not in UNSMOOTHED else 0.0
        twin = None
        if family == "throughput" and len(members) > 1:  # two units of one curve: samples/s on the right
            twin = ax.twinx()
            ax.set_ylabel("steps/s", fontsize="small")
            twin.set_ylabel("samples/s", fontsize="small")
        for run in self.runs:
            for name in members:
                if name not in run.columns.scan.series:
                    continue
                target = twin if twin is not None and name != members[0] else ax
                x, y = self.xy(run, name)
                drawn.append(y)
                label = name if len(self.runs) == 1 else f"{run.name}: {name}"
                style = {"color": run.color, "linestyle": "--" if S.is_validation(name) or target is twin else "-",
                         **_points(y)}
                rx, ry = S.downsample(x, y, opts.buckets)
                if smooth > 0 and len(y) > 1:
                    target.plot(rx, ry, alpha=0.25, linewidth=0.8, gid=f"{run.name}|{name}|raw", **style)
                    sx, sy = S.downsample(x, S.smooth(y, smooth), opts.buckets)
                    target.plot(sx, sy, label=label, gid=f"{run.name}|{name}|smooth", **style)
                else:
                    target.plot(rx, ry, label=label, gid=f"{run.name}|{name}|raw", **style)
        ax.set_title(family.replace("_", " "))
        if metric_mode(family) == "min" and S.spans_decades(drawn):
            ax.set_yscale("log")
        handles, labels = ax.get_legend_handles_labels()
        if twin is not None:
            more = twin.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        ax.legend(handles, labels, loc="best", fontsize="small")

    def memory_panel(self, ax: Any, names: list[str]) -> None:
        """Used memory of RAM and each GPU; a limit is drawn only when usage comes within 4x of it, else the
        title says it (a 24 GB line would flatten a 300 MB curve)."""
        far_limits = []
        for run in self.runs:
            used_max = 0.0
            for name in (n for n in names if n in run.columns.scan.series and not _is_limit(n)):
                x, y = self.xy(run, name)
                used_max = max(used_max, float(np.nanmax(y)) if y.size else 0.0)
                key = name.removeprefix(cols.SYSTEM)
                what = "RAM" if key.startswith("rss") else key.split("_")[0].upper()
                rx, ry = S.downsample(x, y, self.opts.buckets)
                ax.plot(rx, ry, color=run.color, linestyle="-" if what == "RAM" else "-.", gid=f"{run.name}|{name}|raw",
                        label=f"{what} used" + ("" if len(self.runs) == 1 else f" ({run.name})"), **_points(y))
            for name in (n for n in names if n in run.columns.scan.series and _is_limit(n)):
                x, y = self.xy(run, name)
                if y.size and used_max * 4 < float(np.nanmin(y)):
                    far_limits.append(float(np.nanmin(y)))
                    continue
                rx, ry = S.downsample(x, y, self.opts.buckets)
                ax.plot(rx, ry, color=run.color, linestyle=":", gid=f"{run.name}|{name}|raw", label="limit")
        title = "memory (MB)"
        if far_limits:
            title += f", limit {min(far_limits):,.0f} MB"
        ax.set_title(title)
        ax.legend(loc="best", fontsize="small")

    def markers(self, ax: Any, label: bool) -> None:
        """Errors (red dashed), restarts (grey dotted) and checkpoint saves (green dotted) at the step, epoch or
        time they happened; on a step or time axis, the first step of each epoch (faint grey)."""
        for run in self.runs:
            self.epoch_lines(ax, run)
            for kind, color, style in (("errors", "red", "--"), ("attempts", "grey", ":"),
                                       ("checkpoints", "green", ":")):
                found = run.columns.markers.get(kind, [])
                if kind == "checkpoints" and len(found) > MAX_LINES:
                    continue
                for m in found:
                    x = m.get(self.opts.x if self.opts.x != "time" else "t")
                    if x is None:
                        continue
                    if self.opts.x == "time":
                        x = (x - (run.columns.t0 or 0.0)) / self.scale
                    ax.axvline(x, color=color, linestyle=style, alpha=0.7, linewidth=1, gid=f"{run.name}|{kind}")
                    if label and kind != "checkpoints":
                        text = m.get("category") if kind == "errors" else f"attempt {m.get('attempt')}"
                        ax.annotate(str(text), (x, 1), xycoords=("data", "axes fraction"), rotation=90,
                                    fontsize=7, va="top", ha="right", color=color)


    def epoch_lines(self, ax: Any, run: _Run) -> None:
        """Where the epoch count turns over, read from the run's main series (loss, else its first metric)."""
        names = run.columns.metrics
        if self.opts.x == "epoch" or not names:
            return
        data = run.columns.get("loss" if "loss" in names else names[0])
        epochs = np.floor(data[:, cols.Columns.EPOCH])
        turns = np.nonzero(np.diff(epochs) > 0)[0] + 1
        if len(turns) > MAX_LINES:
            return
        x = data[turns, X_COLUMN[self.opts.x]]
        if self.opts.x == "time":
            x = (x - (run.columns.t0 or 0.0)) / self.scale
        for value in x:
            ax.axvline(float(value), color="0.5", linewidth=0.8, alpha=0.3, gid=f"{run.name}|epochs")


def _is_limit(name: str) -> bool:
    return name.endswith(("limit_mb", "total_mb"))


def _memory_line(name: str) -> bool:
    key = name.removeprefix(cols.SYSTEM)
    return key in ("rss_max_mb", "mem_limit_mb") or (key.startswith("gpu") and key.endswith(("_max_mb", "_total_mb")))


def _last_t(columns: cols.Columns) -> float:
    """The time of the newest point (each series' pending point is its newest)."""
    pending = [s.pending[cols.Columns.T] for s in columns.scan.series.values() if s.pending is not None]
    return max(pending, default=columns.t0 or 0.0)
