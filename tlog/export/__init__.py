"""``tlog export``: an experiment's record written out in another ecosystem's own format.

One module per target (parquet, tensorboard, mlflow), each imported only when asked for, so a missing
optional library is one line naming the extra that brings it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

TARGETS = {"parquet": ("pyarrow", "parquet"), "tensorboard": ("tensorboard", "tensorboard"),
           "mlflow": ("mlflow", "mlflow")}
DEFAULT_OUT = {"parquet": "tlog_export/parquet", "tensorboard": "tlog_export/tensorboard",
               "mlflow": "sqlite:///mlflow.db"}


class ExportError(ValueError):
    """A bad target or a missing optional library: shown to the user as one line."""


def exporter(target: str) -> Callable[..., str]:
    """The ``export(exp_dir, out, progress)`` function of ``target``; its library checked first."""
    if target not in TARGETS:
        raise ExportError(f"unknown export target {target!r}: use one of {', '.join(TARGETS)}")
    module, extra = TARGETS[target]
    try:
        importlib.import_module(module)
    except ImportError:
        raise ExportError(f"export to {target} needs the {module} package: pip install 'tlog[{extra}]'") from None
    return importlib.import_module(f"tlog.export.{target}").export


def export(exp_dirs: list[Path], target: str, out: str | None = None, progress: bool = True) -> list[str]:
    """Export each experiment; returns where each one went."""
    run = exporter(target)
    dest = out or DEFAULT_OUT[target]
    return [run(exp_dir, dest, progress) for exp_dir in exp_dirs]
