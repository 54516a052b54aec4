"""tlog plot: smoothing, downsampling, the columns it reads, and the data its figure really draws."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import Runner
from test_reports import T0, append, run_events, write_run

from tlog.store import columns, layout, safefile
from tlog.views import series
from tlog.views.plot import PlotError, PlotOptions, build_figure


def tensorboard_smoothing(values: list[float], weight: float) -> list[float]:
    """TensorBoard's own loop (vz_line_chart2 resetYDomain): the reference the vectorised version must match."""
    out, last, count = [], 0.0, 0
    for v in values:
        if not np.isfinite(v):
            out.append(v)
            continue
        last = last * weight + (1 - weight) * v
        count += 1
        out.append(last / (1 - weight**count))
    return out


@pytest.mark.parametrize("weight", [0.0, 0.6, 0.95, 0.999])
def test_smoothing_is_tensorboards_debiased_ema(weight: float) -> None:
    y = np.random.default_rng(3).normal(5, 2, 12_000)
    y[[10, 500, 7000]] = [np.nan, np.inf, -np.inf]
    got = series.smooth(y, weight)
    want = np.array(tensorboard_smoothing(y.tolist(), weight))
    assert np.array_equal(np.isfinite(got), np.isfinite(want))
    assert np.allclose(got[np.isfinite(got)], want[np.isfinite(want)], rtol=1e-12, atol=1e-12)
    assert got[0] == y[0], "debiased: the first point is not pulled towards zero"


def test_downsampling_keeps_spikes_and_the_last_point() -> None:
    n = 1_000_003
    x = np.arange(n, dtype=float)
    y = np.sin(x / 5000)
    y[123_457], y[654_321] = 50.0, -40.0
    dx, dy = series.downsample(x, y, buckets=500)
    assert len(dx) <= 4 * 500
    points = set(zip(dx.tolist(), dy.tolist(), strict=True))
    assert (123_457.0, 50.0) in points and (654_321.0, -40.0) in points
    assert (dx[-1], dy[-1]) == (x[-1], y[-1]) and dx[0] == 0
    assert np.all(np.diff(dx) > 0), "in order, no duplicates"
    short_x, short_y = series.downsample(x[:100], y[:100])
    assert np.array_equal(short_x, x[:100]) and np.array_equal(short_y, y[:100])


def test_twin_names() -> None:
    assert [series.base_name(n) for n in ("validation_loss", "val/acc", "train_loss", "loss", "val_")] == [
        "loss", "acc", "loss", "loss", "val_"]


def test_columns_one_point_per_step_explicit_wins(tmp_path: Path) -> None:
    exp = tmp_path / "e"
    exp.mkdir()
    append(exp, [
        {"kind": "metrics", "t": 1.0, "step": 1, "src": "auto", "data": {"loss": 0.9}},
        {"kind": "metrics", "t": 1.1, "step": 1, "data": {"loss": 0.8}},
        {"kind": "metrics", "t": 2.0, "step": 2, "data": {"loss": 0.7}},
        {"kind": "metrics", "t": 2.1, "step": 2, "src": "auto", "data": {"loss": 0.6}},
        {"kind": "metrics", "t": 3.0, "step": 3, "src": "auto", "data": {"loss": 0.5}},
        {"kind": "metrics", "t": 3.1, "step": 3, "src": "auto", "data": {"loss": 0.4}},
        {"kind": "metrics", "t": 4.0, "data": {"loss": 0.3}},
        {"kind": "metrics", "t": 5.0, "data": {"loss": 0.2}},
        {"kind": "metrics", "t": 6.0, "step": 7, "rank": 1, "data": {"loss": 9.9}},
    ])
    data = columns.read(exp).get("loss")
    assert data[:, columns.Columns.STEP].tolist() == [1, 2, 3, 3, 3]
    assert data[:, columns.Columns.VALUE].tolist() == [0.8, 0.7, 0.4, 0.3, 0.2]
    assert data[:, columns.Columns.T].tolist() == [1.1, 2.0, 3.1, 4.0, 5.0]


def test_columns_update_incrementally_and_rebuild_when_stale(tmp_path: Path) -> None:
    exp = tmp_path / "inc"
    exp.mkdir()
    events = run_events(40, error_at=30)
    append(exp, events[:50], tail=b'{"kind":"metrics","t":17')
    first = columns.read(exp).get("loss")
    with open(exp / layout.EVENTS, "rb+") as f:  # the half line is completed, then the run goes on
        f.truncate(f.seek(0, 2) - len(b'{"kind":"metrics","t":17'))
    append(exp, events[50:])
    cdir = columns.columns_dir(exp)
    assert (cdir / "index.json").is_file()
    incremental = columns.read(exp)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    append(fresh, events)
    rebuilt = columns.read(fresh)
    for name in ("loss", "accuracy", "validation_loss", "system/rss_mb"):
        assert np.array_equal(incremental.get(name), rebuilt.get(name)), name
    assert len(first) < 40 and np.array_equal(first, incremental.get("loss")[: len(first)])
    assert incremental.markers["errors"] == [{"t": T0 + 30.5, "step": 30, "epoch": 7.25, "category": "memory"}]
    (exp / layout.EVENTS).write_bytes(b"")  # replaced by a different, shorter history
    append(exp, run_events(3))
    assert columns.read(exp).get("loss")[:, columns.Columns.STEP].tolist() == [1, 2, 3]


def test_columns_without_the_lock_scan_into_memory(tmp_path: Path) -> None:
    exp = write_run(tmp_path, "locked", run_events(10), status=None)
    index = (columns.columns_dir(exp) / "index.json").read_bytes()
    append(exp, run_events(5, start_step=11)[3:])
    fd = os.open(columns.columns_dir(exp) / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another updater at work
        data = columns.read(exp).get("loss")
    finally:
        os.close(fd)
    assert data[:, columns.Columns.STEP].tolist() == list(range(1, 16))
    assert (columns.columns_dir(exp) / "index.json").read_bytes() == index, "nothing written without the lock"


def lines_by_gid(fig) -> dict[str, object]:
    return {line.get_gid(): line for ax in fig.axes for line in ax.get_lines() if line.get_gid()}


def test_figure_draws_the_smoothed_and_downsampled_series(tmp_path: Path) -> None:
    events = run_events(6000, error_at=4000)
    spike = next(e for e in events if e.get("step") == 3001 and "loss" in e["data"])
    spike["data"]["loss"] = 50.0
    exp = write_run(tmp_path, "long", events, status="failed")
    opts = PlotOptions(smoothing=0.6, buckets=200)
    fig = build_figure([exp], opts)
    lines = lines_by_gid(fig)
    steps = np.arange(1, 6001, dtype=float)
    loss = 10.0 / steps
    loss[3000] = 50.0
    raw, smooth = lines["long|loss|raw"], lines["long|loss|smooth"]
    want_x, want_y = series.downsample(steps, loss, 200)
    assert np.array_equal(raw.get_xdata(), want_x) and np.array_equal(raw.get_ydata(), want_y)
    want_x, want_y = series.downsample(steps, series.smooth(loss, 0.6), 200)
    assert np.array_equal(smooth.get_xdata(), want_x) and np.allclose(smooth.get_ydata(), want_y, rtol=1e-12)
    assert 50.0 in raw.get_ydata() and raw.get_xdata()[-1] == 6000
    assert raw.get_alpha() == 0.25 and smooth.get_alpha() is None
    val = lines["long|validation_loss|smooth"]
    assert val.axes is raw.axes and val.get_linestyle() == "--", "validation on its training twin's axes"
    assert raw.axes.get_yscale() == "log", "loss from 10 down to 0.0017 spans decades"
    assert not any(gid.startswith("long|learning_rate") for gid in lines), "a constant lr is a setting"
    assert opts.notes == ["constant, not drawn: learning_rate (choose with --metric)"]
    assert not [gid for gid in lines if gid.endswith(("|epochs", "|checkpoints"))], "1500 of each: not drawn"
    memory = lines["long|system/rss_max_mb|raw"].axes
    assert memory.get_title() == "memory (MB)" and lines["long|system/mem_limit_mb|raw"].axes is memory
    assert lines["long|system/mem_limit_mb|raw"].get_linestyle() == ":", "usage came close: the limit is drawn"
    errors = [ln for ln in raw.axes.get_lines() if ln.get_gid() == "long|errors"]
    assert [ln.get_xdata()[0] for ln in errors] == [4000]


def test_short_run_marks_its_points_epochs_checkpoints_and_draws_one_throughput_panel(tmp_path: Path) -> None:
    events = run_events(8, lr=0.1)
    for e in events:
        if e["kind"] == "metrics" and e.get("src") == "auto":
            e["data"].update(learning_rate=0.1 / e["step"], steps_per_s=2.0 + e["step"],
                             samples_per_s=32 * (2.0 + e["step"]), beta1=0.9)
    exp = write_run(tmp_path, "short", events)
    fig = build_figure([exp], PlotOptions(smoothing=0))
    lines = lines_by_gid(fig)
    assert lines["short|system/rss_max_mb|raw"].get_marker() == "o", "8 memory samples: drawn with markers"
    steps_line, samples_line = lines["short|steps_per_s|raw"], lines["short|samples_per_s|raw"]
    assert steps_line.axes is not samples_line.axes and steps_line.axes.get_title() == "throughput"
    assert samples_line.axes.get_ylabel() == "samples/s" and list(samples_line.get_ydata()) == [
        32.0 * (2 + s) for s in range(1, 9)]
    assert sum(1 for ax in fig.axes if ax.get_title()) == 5, "loss, accuracy, learning rate, throughput, memory"
    assert "short|beta1|raw" not in lines
    loss_ax = lines["short|loss|raw"].axes
    marks = {kind: sorted(ln.get_xdata()[0] for ln in loss_ax.get_lines() if ln.get_gid() == f"short|{kind}")
             for kind in ("epochs", "checkpoints")}
    assert marks == {"epochs": [5], "checkpoints": [4, 8]}, "epoch 1 starts at step 5; saves at 4 and 8"


def test_overlay_restarts_and_x_axes(tmp_path: Path) -> None:
    first = run_events(8)
    resumed = run_events(6, start_step=5, attempt=2, t0=T0 + 20)[2:]
    a = write_run(tmp_path, "a", first + resumed)
    b = write_run(tmp_path, "b", run_events(4, lr=0.01, t0=T0 + 1000))
    fig = build_figure([a, b], PlotOptions(metrics=["accuracy"], smoothing=0, x="epoch"))
    lines = lines_by_gid(fig)
    assert sorted(lines) == ["a|accuracy|raw", "a|attempts", "a|checkpoints", "a|system/rss_max_mb|raw",
                             "b|accuracy|raw", "b|checkpoints", "b|system/rss_max_mb|raw"], \
        "the memory limits are far: in the title instead; no epoch lines on an epoch axis"
    assert lines["a|accuracy|raw"].get_color() != lines["b|accuracy|raw"].get_color()
    assert lines["b|accuracy|raw"].get_xdata().tolist() == [0.0, 0.25, 0.5, 0.75]
    assert lines["a|attempts"].get_xdata()[0] == 1.75, "the restart, at the epoch the first attempt reached"
    replayed = lines["a|accuracy|raw"]
    assert replayed.get_xdata().tolist() == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25]
    assert replayed.get_ydata().tolist() == [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1]
    assert replayed.get_xdata().tolist() == sorted(replayed.get_xdata()), "the replayed steps replace, no turning back"
    timed = lines_by_gid(build_figure([b], PlotOptions(metrics=["loss"], smoothing=0, x="time")))
    assert timed["b|loss|raw"].get_xdata().tolist() == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(PlotError, match="no metric 'bleu' in a, b; recorded: loss, learning_rate"):
        build_figure([a, b], PlotOptions(metrics=["bleu"]))


def test_plot_command_writes_png_and_refuses_other_formats(runner: Runner) -> None:
    write_run(runner.log_dir, "p", run_events(30))
    res = runner.run("plot")
    assert res.returncode == 0, res.stderr
    png = runner.exp("p") / "plots" / "training_progress.png"
    assert res.stdout.strip() == f"plot written to {Path('training_logs') / 'p' / 'plots' / 'training_progress.png'}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = runner.run("plot", "p", "-o", "out.gif")
    assert res.returncode == 2 and res.stderr == "tlog: error: cannot write 'out.gif': use a .png, .svg or .pdf file\n"


def test_the_store_never_writes_through_a_planted_link(runner: Runner, tmp_path: Path) -> None:
    """A shared log dir: a link planted at an output's path is replaced, its target never written."""
    write_run(runner.log_dir, "p", run_events(30))
    victim = tmp_path / "colleague.txt"
    victim.write_text("mine")
    exp = runner.exp("p")
    (exp / "plots").mkdir(exist_ok=True)
    png = exp / "plots" / "training_progress.png"
    png.symlink_to(victim)
    (exp / "training_summary.json").unlink(missing_ok=True)
    (exp / "training_summary.json").symlink_to(victim)
    res = runner.run("plot")
    assert res.returncode == 0, res.stderr
    assert not png.is_symlink() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert victim.read_text() == "mine"
    assert not [p.name for p in (exp / "plots").iterdir() if p.name.endswith(".tmp")], "no temporary file left"
    (exp / "events.jsonl").rename(exp / "moved.jsonl")
    (exp / "events.jsonl").symlink_to(victim)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        safefile.open_append(exp / "events.jsonl")
    assert victim.read_text() == "mine"


def test_a_cache_directory_planted_as_a_link_is_neither_written_nor_read(tmp_path: Path) -> None:
    exp = tmp_path / "p"
    write_run(tmp_path, "p", run_events(30))
    real = columns.read(exp).get("loss").tolist()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "0.f8").write_bytes(b"a colleague's data")
    for link in (exp / ".tlog", exp / columns.DIRNAME):  # the cache directory, or the one above it
        shutil.rmtree(exp / ".tlog", ignore_errors=True)
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(theirs, target_is_directory=True)
        assert columns.read(exp).get("loss").tolist() == real
        assert sorted(p.name for p in theirs.iterdir()) == ["0.f8"], "no lock, no index, nothing truncated"
        assert (theirs / "0.f8").read_bytes() == b"a colleague's data"
        link.unlink()
