"""MLflow export: one MLflow run per experiment, in the tracking store the user names.

The default store is ``sqlite:///mlflow.db`` (MLflow's file store is deprecated); the run lives in the
MLflow experiment ``tlog``, named after the tlog experiment and tagged ``tlog.experiment`` with its path.
Params are the captured configuration (flattened), metrics every point with its step and timestamp
(``attempt`` also a metric, so restarts read apart), the status mapped to FINISHED / FAILED / KILLED /
RUNNING, and ``training_errors.json`` and the plot as artifacts.  Exporting again deletes the run found by
its tag and writes it afresh, so points are never duplicated.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from tlog import protocol
from tlog.export import tables
from tlog.export.progress import progress_bar
from tlog.store import columns, layout

MLFLOW_EXPERIMENT = "tlog"
TAG = "tlog.experiment"
BATCH = 1000  # MLflow's limit of metrics per log_batch
PARAMS_BATCH = 100
STATUS = {"finished": "FINISHED", "running": "RUNNING", "restarting": "RUNNING", "killed": "KILLED",
          "interrupted": "KILLED", "preempted": "KILLED", "time-limit": "KILLED"}


def export(exp_dir: Path, out: str, progress: bool = True) -> str:
    import logging

    for talker in ("alembic", "mlflow"):  # the sqlite store's set-up talks at INFO
        logging.getLogger(talker).setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=out)
    found = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    experiment_id = found.experiment_id if found else client.create_experiment(MLFLOW_EXPERIMENT,
                                                                               _artifacts_beside(out))
    key = str(exp_dir.resolve())
    for old in client.search_runs([experiment_id], filter_string=f"tags.`{TAG}` = '{_quote(key)}'"):
        client.delete_run(old.info.run_id)
    summary = tables.summary(exp_dir)
    start = summary.get("started")
    run = client.create_run(experiment_id, start_time=_ms(start) if start else None, run_name=exp_dir.name,
                            tags={TAG: key, "tlog.status": str(summary.get("status")),
                                  "tlog.restarts": str(summary.get("restarts") or 0)})
    run_id = run.info.run_id
    _params(client, run_id, tables.config(exp_dir))
    _metrics(client, run_id, columns.read(exp_dir), progress, exp_dir.name)
    _artifacts(client, run_id, exp_dir)
    ended = summary.get("ended")
    client.set_terminated(run_id, STATUS.get(str(summary.get("status")), "FAILED"),
                          end_time=_ms(ended) if ended else None)
    return f"{out} run {run_id}"


def _artifacts_beside(uri: str) -> str | None:
    """``mlruns/`` next to a SQLite store (MLflow's default is the current directory, wherever that is)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return (Path(uri[len(prefix):]).resolve().parent / "mlruns").as_uri()


def _quote(text: str) -> str:
    return text.replace("'", "\\'")


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _params(client: MlflowClient, run_id: str, config: dict) -> None:
    from tlog.report import flatten

    params = [Param(k[:250], str(v)[:6000]) for k, v in sorted(flatten(config).items()) if v is not None]
    for i in range(0, len(params), PARAMS_BATCH):
        client.log_batch(run_id, params=params[i:i + PARAMS_BATCH])


def _metrics(client: MlflowClient, run_id: str, cols: columns.Columns, progress: bool, name: str) -> None:
    table = tables.metrics(cols)
    system = tables.system(cols)
    points = [*_points(table, ""), *_points(system, "system/"), *_points(
        {"step": table["step"], "time": table["time"], "attempt": table["attempt"].astype(np.float64)}, "", True)]
    with progress_bar(progress, f"mlflow: {name}", len(points)) as advance:
        for i in range(0, len(points), BATCH):
            client.log_batch(run_id, metrics=points[i:i + BATCH])
            advance(min(BATCH, len(points) - i))


def _points(table: dict, prefix: str, only_attempt: bool = False) -> list[Metric]:
    names = ["attempt"] if only_attempt else [n for n in table if n not in ("attempt", "step", "epoch", "time")]
    steps, stamps = table["step"].tolist(), np.round(table["time"] * 1000).tolist()
    out = []
    for n in names:
        for step, ms, value in zip(steps, stamps, table[n].tolist(), strict=True):
            if not math.isnan(value):
                out.append(Metric(prefix + n, value, int(ms), int(step)))
    return out


def _artifacts(client: MlflowClient, run_id: str, exp_dir: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        errors = Path(tmp) / layout.ERRORS
        errors.write_bytes(protocol.dumps(tables.errors(exp_dir)))
        client.log_artifact(run_id, str(errors))
        client.log_artifact(run_id, str(_plot(exp_dir, Path(tmp))), artifact_path="plots")


def _plot(exp_dir: Path, tmp: Path) -> Path:
    """The run's plot as ``tlog plot`` draws it: the saved one, else drawn now."""
    saved = exp_dir / layout.PLOTS / "training_progress.png"
    if saved.is_file():
        return saved
    from tlog.views.plot import PlotOptions, write_plot

    return write_plot([exp_dir], tmp / "training_progress.png", PlotOptions())
