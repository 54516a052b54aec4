"""The live panel: ViewState folding, render() content and width, the displays, and ``tlog watch``."""

from __future__ import annotations

import io
import json
import re
import threading
import time
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console

from tlog.supervisor.display import PlainDisplay
from tlog.views.panel import LivePanel, render, sparkline, status_line
from tlog.views.viewstate import SPARK_POINTS, ViewState
from tlog.views.watch import Follower, Watcher, parse_log_line, watch_experiment

T0 = 1_790_000_000.0
GPU = {"gpu0_used_mb": 10240, "gpu0_total_mb": 81920, "gpu0_peak_mb": 12000, "gpu0_util": 95}
SYSTEM = {"rss_mb": 812, "rss_peak_mb": 900, "mem_limit_mb": 16384, "headroom_mb": 15000, "cpu_percent": 98.5}


def run_events(steps: int = 200, batches: int = 50, gpu: bool = False,
               exit_code: int | None = None) -> list[dict]:
    """A realistic run: attempt start, meta, config, phases, metrics over steps, validation, checkpoints."""
    argv = ["python", "train.py", "--lr", "0.1"]
    events = [
        {"kind": "attempt", "t": T0, "data": {"event": "start", "attempt": 1, "max_attempts": 3,
                                              "pid": 4242, "argv": argv}},
        {"kind": "meta", "t": T0, "data": {"argv": argv[1:], "cwd": "/w", "host": "node7", "python": "3.11"}},
        {"kind": "config", "t": T0, "data": {"lr": 0.1, "batch_size": 64}},
        {"kind": "phase", "t": T0, "data": {"phase": "data_loading", "total_epochs": 5}},
    ]
    for step in range(steps):
        epoch, batch = divmod(step, batches)
        t = T0 + 1 + step * 0.1
        events.append({"kind": "phase", "t": t, "step": step, "data": {"phase": "forward_pass"}})
        events.append({"kind": "metrics", "t": t, "step": step, "epoch": epoch, "batch": batch,
                       "data": {"loss": 2.0 / (1 + step * 0.05), "learning_rate": 0.1,
                                "accuracy": step / steps, "total_batches": batches}})
        if batch == batches - 1:
            events.append({"kind": "metrics", "t": t, "step": step, "epoch": epoch,
                           "data": {"validation_loss": 1.0 / (epoch + 1) + (0.3 if epoch == 2 else 0)}})
            events.append({"kind": "checkpoint", "t": t, "step": step,
                           "data": {"path": f"ckpt/epoch{epoch}.pt", "bytes": 3 * 2**30}})
    t = T0 + 1 + steps * 0.1
    events.append({"kind": "system", "t": t, "data": {**SYSTEM, **(GPU if gpu else {})}})
    events.append({"kind": "warning", "t": t, "data": {"message": "lr_scheduler.step() before optimizer",
                                                       "category": "UserWarning"}})
    events.append({"kind": "error", "t": t, "data": {"category": "nan_loss", "phase": "loss_computation",
                                                     "error_message": "loss became NaN at step 150"}})
    if exit_code is not None:
        events.append({"kind": "attempt", "t": t + 1, "data": {"event": "exit", "attempt": 1,
                                                               "exit_code": exit_code}})
    return events


def make_state(**kwargs: object) -> ViewState:
    state = ViewState(name="resnet-cifar")
    for event in run_events(**kwargs):
        state.apply(event)
    for i in range(12):
        state.apply_output("stdout", f"train step {i} [bold]raw[/bold] :smile:\n")
    state.apply_output("stderr", "UserWarning: last line of stderr")
    return state


def text_of(renderable: object, width: int) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


@pytest.mark.parametrize("width", [80, 160])
def test_render_shows_the_run(width: int) -> None:
    text = text_of(render(make_state(), width, now=T0 + 30), width)
    assert "resnet-cifar" in text
    assert "python train.py --lr 0.1" in text
    assert "attempt 1 of 3" in text and "running" in text and "elapsed 0:00:30" in text
    assert "4/5" in text  # steps 150..199 are epoch index 3: the fourth of five
    assert "49/50" in text and "step/s" in text and "ETA" in text
    latest, best = "0.1826", "0.1826"  # loss at step 199, the lowest so far
    assert any(line.split()[2:4] == [latest, best] for line in text.splitlines()[1:] if "│ loss" in line)
    val_line = next(line for line in text.splitlines() if "validation_loss" in line)
    assert val_line.split()[2:4] == ["0.25", "0.25"]
    assert "812 MB / 16.0 GB" in text and "peak 900 MB" in text
    assert "nan_loss ×1" in text and "loss became NaN" in text
    assert "UserWarning ×1" in text
    assert "ckpts    4" in text and "ckpt/epoch3.pt" in text
    assert "UserWarning: last line of stderr" in text
    assert "train step 11 [bold]raw[/bold] :smile:" in text  # output is shown literally
    assert "train step 0 " not in text  # only the last lines
    assert "GPU" not in text
    assert all(len(line) <= width for line in text.splitlines())


@pytest.mark.parametrize("width", [80, 160])
def test_gpu_lines_when_the_system_has_gpus(width: int) -> None:
    text = text_of(render(make_state(gpu=True), width, now=T0 + 30), width)
    gpu_lines = [line for line in text.splitlines() if "GPU0" in line]
    assert len(gpu_lines) == 1
    assert "10.0 GB / 80.0 GB" in gpu_lines[0] and "peak 11.7 GB" in gpu_lines[0]
    assert all(len(line) <= width for line in text.splitlines())


def test_long_and_wide_content_fits_80_columns() -> None:
    state = ViewState(name="an-experiment-name-that-goes-on-" * 4, command="python " + "--flag " * 40)
    for step in range(5):
        state.apply({"kind": "metrics", "t": T0 + step, "step": step, "epoch": 123, "batch": 98765,
                     "data": {"a_really_long_metric_name_for_the_loss_" * 2: 1e-9 * step,
                              "total_batches": 99999}})
    state.apply({"kind": "system", "t": T0, "data": {"rss_mb": 2e6, "mem_limit_mb": 4e6, **GPU}})
    state.apply({"kind": "error", "t": T0, "data": {"category": "oom " * 30, "error_message": "x" * 300}})
    state.apply_output("stdout", "训练损失 " * 40)
    state.apply_output("stdout", "\x1b[31mred text\x1b[0m\tafter a tab " * 10)
    text = text_of(render(state, 80, now=T0 + 10), 80)
    assert all(cell_len(line) <= 80 for line in text.splitlines())
    assert "red text" in text and "\x1b" not in text


def test_missing_values_are_not_invented() -> None:
    state = ViewState(name="fresh")
    state.apply({"kind": "metrics", "t": T0, "step": 3, "data": {"loss": "nan", "acc": 0.5}})
    text = text_of(render(state, 80, now=T0 + 5), 80)
    assert "RAM" in text and "n/a" in text
    assert "0 MB" not in text and "GPU" not in text and "epoch" not in text
    assert "nan" in text  # the latest loss is NaN, and it shows as such
    loss_line = next(line for line in text.splitlines() if "│ loss" in line)
    assert loss_line.split()[2:4] == ["nan", "n/a"]  # NaN is never the best value


def test_best_is_min_for_losses_and_max_otherwise() -> None:
    state = ViewState()
    for i, value in enumerate([0.9, 0.3, 0.6]):
        state.apply({"kind": "metrics", "t": T0 + i, "data": {"val_loss": value, "accuracy": value,
                                                              "perplexity": value, "lr": value}})
    metrics = state.metrics
    assert (metrics["val_loss"].best, metrics["perplexity"].best) == (0.3, 0.3)
    assert metrics["accuracy"].best == 0.9
    assert metrics["lr"].best is None and metrics["lr"].last == 0.6


def test_trend_stays_bounded_and_covers_the_run() -> None:
    state = ViewState()
    for step in range(10_000):
        state.apply({"kind": "metrics", "t": T0 + step, "step": step, "data": {"loss": 10_000 - step}})
    trend = state.metrics["loss"].trend()
    assert len(trend) <= SPARK_POINTS + 1
    assert trend[0] > 9000 and trend[-1] < 1000 and trend == sorted(trend, reverse=True)
    line = sparkline(trend, 20)
    assert len(line) == 20 and line[0] == "█" and line[-1] == "▁"
    assert sparkline([1.0, float("nan"), 2.0], 10) == "▁ █"


def test_rate_and_restart_status() -> None:
    state = make_state(exit_code=1)
    assert state.rate() == pytest.approx(10.0)
    assert state.status == "failed" and state.ended
    state.apply({"kind": "restart", "t": T0 + 40, "data": {"attempt": 2, "reason": "nan_loss", "delay_s": 5}})
    text = text_of(render(state, 80, now=T0 + 41), 80)
    assert "restarting" in text and "retry in 5s: nan_loss" in text
    state.apply({"kind": "attempt", "t": T0 + 45,
                 "data": {"event": "start", "attempt": 2, "max_attempts": 3}})
    assert state.status == "running" and not state.ended and state.attempt == 2


def test_status_line() -> None:
    line = status_line(make_state(), now=T0 + 133)
    assert line == "[tlog] resnet-cifar step 199 epoch 4/5 loss 0.1826 rss 812 MB elapsed 0:02:13"


def test_render_while_events_arrive() -> None:
    state = make_state(gpu=True)
    stop = threading.Event()

    def feed() -> None:
        step = 0
        while not stop.is_set():
            step += 1
            state.apply({"kind": "metrics", "t": T0 + step, "step": step, "data": {f"m{step % 50}": step}})
            state.apply({"kind": "system", "t": T0 + step, "data": {**SYSTEM, **GPU}})

    thread = threading.Thread(target=feed)
    thread.start()
    texts = []
    try:
        for _ in range(20):  # a render racing the reader threads must neither raise nor show a torn state
            texts.append(text_of(render(state, 120), 120))
    finally:
        stop.set()
        thread.join()
    assert all("resnet-cifar" in t and "GPU0" in t for t in texts)
    steps = [int(m.group(1)) for t in texts if (m := re.search(r"step (\d+)", t))]
    assert len(steps) == len(texts) and steps == sorted(steps) and steps[-1] > steps[0], steps


def test_live_panel_prints_output_literally_above_the_panel() -> None:
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    state = make_state()
    with LivePanel(state, console, refresh_per_second=20) as panel:
        panel.print_output("stdout", "[red]not markup[/red] :smile: 1/2\n")
        panel.print_output("stderr", "partial line without newline")
        panel.print_output("stdout", "batch one\nbatch two\n")
    written = out.getvalue()
    assert "batch one\nbatch two" in written
    assert "[red]not markup[/red] :smile: 1/2" in written
    assert "partial line without newline" in written
    assert "resnet-cifar" in written
    assert list(state.output)[-3:] == [("stderr", "partial line without newline"),
                                       ("stdout", "batch one"), ("stdout", "batch two")]


def test_status_lines_off_a_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    state = make_state()
    with PlainDisplay(state, status_every=0.05) as display:
        display.passthrough("stderr", b"partial progress")
        time.sleep(0.2)
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert lines[0] == "partial progress", "a status line never lands on the end of the script's partial line"
    assert len([line for line in lines if line.startswith("[tlog] resnet-cifar step 199")]) >= 2


def write_experiment(exp_dir: Path, events: list[dict], partial: bool = True) -> None:
    exp_dir.mkdir(parents=True, exist_ok=True)
    body = "".join(json.dumps(event) + "\n" for event in events)
    body += "not json at all\n"
    if partial:
        body += '{"kind": "metrics", "t": 1, "data": {"loss": 12'  # the writer is mid-line
    (exp_dir / "events.jsonl").write_text(body)
    (exp_dir / "training.log").write_text(
        "2026-11-30 12:00:00.123 [tlog] attempt 1 started\n"
        "2026-11-30 12:00:01.000 | epoch 3 done\n"
        "2026-11-30 12:00:02.000 ! Traceback (most recent call last)\n"
    )


def test_watch_a_finished_run(tmp_path: Path) -> None:
    exp_dir = tmp_path / "resnet-cifar"
    write_experiment(exp_dir, run_events(exit_code=0))
    console = Console(record=True, width=100, file=io.StringIO())
    started = time.monotonic()
    assert watch_experiment(exp_dir, console, poll_s=0.05) == 0
    assert time.monotonic() - started < 2
    text = console.export_text()
    assert "resnet-cifar" in text and "finished" in text and "4/5" in text
    assert "0.1826" in text and "elapsed 0:00:22" in text
    assert "[tlog] attempt 1 started" in text and "epoch 3 done" in text
    assert "Traceback (most recent call last)" in text

    watcher = Watcher(exp_dir)
    watcher.poll()
    assert watcher.state.metrics["loss"].last == pytest.approx(0.18265, abs=1e-4)  # not the cut 12
    assert watcher.events.partial.startswith(b'{"kind": "metrics"')


def test_watch_follows_a_running_run_until_it_exits(tmp_path: Path) -> None:
    exp_dir = tmp_path / "live-run"
    events = run_events(steps=100)
    write_experiment(exp_dir, events[:50], partial=False)

    def writer() -> None:
        with (exp_dir / "events.jsonl").open("a") as f:
            for event in events[50:]:
                line = json.dumps({**event, "t": time.time()}) + "\n"
                f.write(line[:10])  # a half-written line on every poll boundary
                f.flush()
                f.write(line[10:])
            f.write(json.dumps({"kind": "attempt", "t": time.time(),
                                "data": {"event": "exit", "attempt": 1, "exit_code": 0}}) + "\n")

    console = Console(record=True, width=100, file=io.StringIO())
    thread = threading.Timer(0.2, writer)
    thread.start()
    started = time.monotonic()
    assert watch_experiment(exp_dir, console, refresh_hz=10, poll_s=0.05, settle_s=0.3) == 0
    thread.join()
    assert time.monotonic() - started < 5
    text = console.export_text()
    assert "finished" in text and "99/50" not in text and "step 99" in text


def test_watch_a_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert watch_experiment(tmp_path / "nope", Console(file=io.StringIO())) != 0
    err = capsys.readouterr().err
    assert "nope" in err and len(err.strip().splitlines()) == 1


def test_follower_and_log_parsing(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    path.write_bytes(b"cut line\nwhole one\nhalf")
    follower = Follower(path, backlog=18)
    assert list(follower.lines()) == [b"whole one"]
    with path.open("ab") as f:
        f.write(b"-done\n")
    assert list(follower.lines()) == [b"half-done"]
    assert parse_log_line(b"2026-11-30 12:00:00.123 | a | b") == ("stdout", "a | b")
    assert parse_log_line(b"2026-11-30 12:00:00.123 ! oops") == ("stderr", "oops")
    assert parse_log_line(b"2026-11-30 12:00:00.123 [tlog] hi") == ("tlog", "[tlog] hi")
    assert parse_log_line(b"free text") == ("stdout", "free text")


def test_costs(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a benchmark gate: loose bounds that catch an accidental O(n) per event, and the numbers."""
    state = make_state(gpu=True)
    n = 20_000
    events = [{"kind": "metrics", "t": T0 + i * 0.01, "step": i, "epoch": i // 500, "batch": i % 500,
               "data": {"loss": 1.0 / (i + 1), "accuracy": 0.5, "learning_rate": 0.1}} for i in range(n)]
    started = time.perf_counter()
    for event in events:
        state.apply(event)
    apply_us = (time.perf_counter() - started) / n * 1e6
    console = Console(width=160, file=io.StringIO())
    started = time.perf_counter()
    for _ in range(10):
        console.print(render(state, 160))
    render_ms = (time.perf_counter() - started) / 10 * 1e3
    with capsys.disabled():
        print(f"\napply: {apply_us:.2f} µs per metrics event; render+print at 160 cols: {render_ms:.2f} ms")
    assert apply_us < 100 and render_ms < 200


def test_the_header_shows_the_current_hang_limit() -> None:
    state = make_state()
    assert "hang limit" not in text_of(render(state, 120, now=T0 + 30), 120)
    state.set_hang_limit(312.0)
    assert "hang limit 0:05:12" in text_of(render(state, 120, now=T0 + 30), 120)
