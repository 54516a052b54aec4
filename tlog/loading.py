"""``tlog.load``: one experiment's record for a notebook, without parsing the CSV by hand.

Metrics and resource samples come from the columnar cache (``store.columns``), so a 1,000,000-step run
loads in about a second; as pandas DataFrames when pandas is installed (``time`` a UTC datetime column),
else as plain columns (a dict of numpy arrays).  Imported by ``tlog.load`` on first use only: ``import
tlog`` in a training script stays free of numpy and pandas.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlog import protocol
from tlog.export import tables
from tlog.store import columns, layout


@dataclass
class Run:
    """What ``tlog.load`` returns: ``metrics`` one row per attempt and step, ``system`` one row per
    resource sample, ``errors`` one row per classified failure, ``config`` the captured configuration,
    ``status`` how it ended (as ``tlog summary`` says), ``summary`` the whole summary document."""

    name: str
    path: Path
    status: str
    metrics: Any
    system: Any
    errors: Any
    config: dict[str, Any]
    summary: dict[str, Any] = field(repr=False)


def load(experiment: str | os.PathLike, log_dir: str | os.PathLike | None = None,
         pandas: bool | None = None) -> Run:
    """The run at path ``experiment``, or named so in ``log_dir`` (default ``$TLOG_LOG_DIR`` or
    ``training_logs``).  ``pandas``: DataFrames (True), plain columns (False), or whichever is installed."""
    base = Path(log_dir or os.environ.get(protocol.ENV_LOG_DIR) or layout.DEFAULT_LOG_DIR)
    exp_dir = layout.resolve(str(experiment), base)
    if pandas is None:
        try:
            import pandas as _  # noqa: F401
            pandas = True
        except ImportError:
            pandas = False
    cols = columns.read(exp_dir)
    metrics, system, errors = tables.metrics(cols), tables.system(cols), tables.errors(exp_dir)
    summary = tables.summary(exp_dir)
    if pandas:
        metrics, system, errors = _frame(metrics), _frame(system), _records(errors)
    return Run(name=exp_dir.name, path=exp_dir, status=str(summary.get("status")), metrics=metrics,
               system=system, errors=errors, config=tables.config(exp_dir), summary=summary)


def _frame(table: dict):  # -> pandas.DataFrame
    import pandas as pd

    frame = pd.DataFrame(table)
    frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
    return frame


def _records(rows: list[dict[str, Any]]):  # -> pandas.DataFrame
    import pandas as pd

    return pd.DataFrame.from_records(rows)
