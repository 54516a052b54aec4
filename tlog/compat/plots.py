"""The seed's four-panel training plot, drawn without pyplot.

Imported only by ``create_training_plots``: matplotlib loads then and never
before.  The figure is built with the object API and the Agg canvas, so the
script's own pyplot state (its backend, its open figures) is left alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tlog.store import safefile

if TYPE_CHECKING:
    from tlog.compat.tracker import TrainingProgressTracker

PANELS = (
    ("loss", "Training Loss", "Loss", "b-"),
    ("accuracy", "Training Accuracy", "Accuracy", "g-"),
    ("learning_rate", "Learning Rate", "Learning Rate", "r-"),
)


def draw(tracker: TrainingProgressTracker, save_dir: Path, config: dict[str, Any]) -> Path:
    """Write ``training_progress.<save_format>`` into ``save_dir`` at the configured size and dpi."""
    fmt = str(config["save_format"]).lstrip(".")
    dpi = float(config["dpi"])
    fig = Figure(figsize=tuple(config["figure_size"]), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    fig.suptitle(f"Training Progress - {tracker.logger.experiment_name}", fontsize=16)
    for ax, (key, title, ylabel, style) in zip(axes.flat, PANELS, strict=False):
        series = tracker.series[key]
        ax.plot(series.xs, series.ys, style, label=title)
        ax.set_title(title)
        ax.set_xlabel("Step")
        ax.set_ylabel(ylabel)
        ax.legend()
        ax.grid(True)
    categories = tracker.get_error_summary()["error_categories"]
    if categories:
        ax = axes[1, 1]
        ax.bar(list(categories), list(categories.values()), color="orange")
        ax.set_title("Error Categories")
        ax.set_xlabel("Error Category")
        ax.set_ylabel("Count")
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    save_dir.mkdir(parents=True, exist_ok=True)
    path = save_dir / f"training_progress.{fmt}"
    with safefile.replacing(path) as f:
        fig.savefig(f, dpi=dpi, format=fmt)
    return path
