"""tlog export: real round trips through pyarrow, TensorBoard's reader and MlflowClient, every point
compared with training_metrics.csv, on one real run that crashed and restarted once."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from conftest import Runner, clean_env, script

STEPS = ("--epochs", "2", "--log-acc", "--val", "--crash-at", "6")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Runner:
    """Two attempts of steps.py (each crashes at step 6), every step logged."""
    runner = Runner(tmp_path_factory.mktemp("export"))
    proc = runner.run("run", "-q", "--name", "exp", "--log-every", "1", "--restart", "on-failure", "--restart-on",
                      "all", "--max-restarts", "1", "--backoff", "0", script("steps.py"), *STEPS)
    assert proc.returncode == 1, proc.stderr
    return runner


def csv_rows(runner: Runner) -> list[dict[str, str]]:
    return csv_rows_of(runner.exp("exp"))


def csv_rows_of(exp: Path) -> list[dict[str, str]]:
    with open(exp / "training_metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def values(rows: list[dict[str, str]], name: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[name])) for r in rows if r.get(name)]


def test_parquet_tables_match_the_csv(run: Runner) -> None:
    import pyarrow.parquet as pq

    out = run.cwd / "pq"
    for _ in range(2):  # a second export replaces the files
        proc = run.run("export", "exp", "--to", "parquet", "--out", str(out))
        assert proc.returncode == 0, proc.stderr
    metrics = pq.read_table(out / "exp" / "metrics.parquet")
    rows = csv_rows(run)
    assert metrics.num_rows == len(rows) == 12  # six steps in each attempt
    assert str(metrics.schema.field("step").type) == "int64"
    assert str(metrics.schema.field("time").type) == "timestamp[us, tz=UTC]"
    table = metrics.to_pydict()
    assert table["attempt"] == [1] * 6 + [2] * 6
    for name in ("loss", "accuracy", "validation_loss"):
        got = [(s, v) for s, v in zip(table["step"], table[name], strict=True) if v is not None]
        assert got == values(rows, name), name
    errors = pq.read_table(out / "exp" / "errors.parquet").to_pydict()
    assert errors["attempt"] == [1, 2] and errors["step"] == [6, 6]
    assert all("planted failure" in m for m in errors["error_message"])
    events = pq.read_table(out / "exp" / "events.parquet").to_pydict()
    assert {"attempt", "crash", "config"} <= set(events["kind"]) and "metrics" not in events["kind"]
    system = pq.read_table(out / "exp" / "system.parquet")
    assert "rss_mb" in system.schema.names and system.num_rows >= 1


def test_tensorboard_runs_per_attempt_match_the_csv(run: Runner) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = run.cwd / "tb"
    for _ in range(2):
        proc = run.run("export", "exp", "--to", "tensorboard", "--out", str(out))
        assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["exp", "exp-attempt2"]
    rows = csv_rows(run)
    got: dict[str, list[tuple[int, float]]] = {}
    for run_dir in ("exp", "exp-attempt2"):
        files = list((out / run_dir).iterdir())
        assert len(files) == 1, files  # exporting again replaced the file
        acc = EventAccumulator(str(out / run_dir), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        tags = acc.Tags()
        assert {"train/loss", "train/accuracy", "validation/loss", "system/rss_mb"} <= set(tags["scalars"])
        assert {"config", "errors"} <= set(tags["tensors"])
        assert [e.step for e in acc.Tensors("errors")] == [6]
        for tag in ("train/loss", "train/accuracy", "validation/loss"):
            got.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        walls = [e.wall_time for e in acc.Scalars("train/loss")]
        assert walls == sorted(walls) and walls[0] > 1.7e9
    for tag, name in (("train/loss", "loss"), ("train/accuracy", "accuracy"), ("validation/loss", "validation_loss")):
        want = values(rows, name)
        assert [s for s, _ in got[tag]] == [s for s, _ in want], tag
        assert all(math.isclose(g, w, rel_tol=1e-6) for (_, g), (_, w) in zip(got[tag], want, strict=True)), tag


def test_mlflow_run_matches_the_csv_and_is_replaced(run: Runner) -> None:
    from mlflow.tracking import MlflowClient

    (run.cwd / "store").mkdir()
    uri = f"sqlite:///{run.cwd / 'store' / 'mlflow.db'}"
    for _ in range(2):
        proc = run.run("export", "exp", "--to", "mlflow", "--out", uri)
        assert proc.returncode == 0, proc.stderr
        assert "INFO" not in proc.stderr
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tlog")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    found = runs[0]
    assert found.info.status == "FAILED" and found.info.run_name == "exp"
    assert found.data.params["optimizer.lr"] == "0.1" and found.data.params["args.crash_at"] == "6"
    rows = csv_rows(run)
    for name in ("loss", "accuracy", "validation_loss"):
        history = client.get_metric_history(found.info.run_id, name)
        assert sorted((m.timestamp, m.step, m.value) for m in history) == sorted(
            (m.timestamp, m.step, m.value) for m in history)
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: (m.timestamp, m.step))] == \
            values(rows, name), name
    attempts = client.get_metric_history(found.info.run_id, "attempt")
    assert sorted(m.value for m in attempts) == [1.0] * 6 + [2.0] * 6
    paths = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert paths == {"plots", "training_errors.json"}
    assert [a.path for a in client.list_artifacts(found.info.run_id, "plots")] == ["plots/training_progress.png"]
    assert (run.cwd / "store" / "mlruns").is_dir() and not (run.cwd / "mlruns").exists()
    local = client.download_artifacts(found.info.run_id, "training_errors.json", str(run.cwd))
    assert [e["attempt"] for e in json.loads(Path(local).read_text())] == [1, 2]


def test_unknown_target_is_one_line(run: Runner) -> None:
    proc = run.run("export", "exp", "--to", "wandb")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["tlog: error: unknown export target 'wandb': use one of parquet, "
                                                "tensorboard, mlflow"]


def test_missing_library_is_one_line_naming_the_extra(run: Runner, tmp_path: Path) -> None:
    """An export whose library is not installed: one line naming the extra, no traceback, nothing written."""
    shim = tmp_path / "shim" / "mlflow"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named mlflow')\n")
    proc = run.run("export", "exp", "--to", "mlflow", "--out", f"sqlite:///{tmp_path / 'm.db'}",
                   env=clean_env(PYTHONPATH=str(shim.parent)))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["tlog: error: export to mlflow needs the mlflow package: "
                                                "pip install 'tlog[mlflow]'"]
    assert not (tmp_path / "m.db").exists()


def test_load_returns_frames_or_plain_columns(run: Runner) -> None:
    import tlog

    rows = csv_rows(run)
    by_path = tlog.load(run.exp("exp"))
    assert by_path.status == "failed" and by_path.name == "exp"
    frame = by_path.metrics
    assert list(frame["step"]) == [int(r["step"]) for r in rows]
    assert list(frame["loss"]) == [float(r["loss"]) for r in rows]
    assert str(frame["time"].dt.tz) == "UTC" and frame["time"].iloc[0].year >= 2024
    assert list(by_path.errors["attempt"]) == [1, 2]
    assert by_path.config["args"]["crash_at"] == 6
    assert "rss_mb" in by_path.system.columns
    plain = tlog.load("exp", log_dir=run.log_dir, pandas=False)
    assert isinstance(plain.metrics, dict) and plain.metrics["loss"].tolist() == [float(r["loss"]) for r in rows]
    assert [e["step"] for e in plain.errors] == [6, 6]


def test_live_tensorboard_export_grows_with_the_run(tmp_path: Path) -> None:
    import signal
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runner = Runner(tmp_path)
    (tmp_path / "tlog.toml").write_text('[run]\nexport = "tensorboard:tb"\n')
    proc = runner.popen("run", "-q", "--name", "live", "--log-every", "1", script("steps.py"), "--log-acc",
                        "--val", "--hold-at", "6")
    log = runner.exp("live") / "training.log"
    deadline = time.monotonic() + 60
    while not (log.is_file() and "READY" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    acc = EventAccumulator(str(tmp_path / "tb" / "live"), size_guidance={"scalars": 0})
    acc.Reload()  # while the run is held at step 6
    assert [e.step for e in acc.Scalars("train/loss")][:5] == [1, 2, 3, 4, 5]
    assert [e.step for e in acc.Scalars("validation/loss")] == [4]
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    acc = EventAccumulator(str(tmp_path / "tb" / "live"), size_guidance={"scalars": 0})
    acc.Reload()
    want = values(csv_rows_of(runner.exp("live")), "loss")
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(s, pytest.approx(v, rel=1e-6)) for s, v in want]
    assert "system/rss_mb" in acc.Tags()["scalars"]


def test_live_export_refuses_another_target(runner: Runner) -> None:
    proc = runner.run("run", "--export", "mlflow:x", script("steps.py"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("tlog: error: --export 'mlflow:x': use tensorboard:DIR "
                                   "(live export supports TensorBoard)")
