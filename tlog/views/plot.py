"""``tlog plot``: loss, accuracy, learning rate and errors of a run, against the step."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from tlog.protocol import number
from tlog.store import layout
from tlog.store.reader import iter_events

PANELS = (
    ("Loss", ("loss", "validation_loss")),
    ("Accuracy", ("accuracy", "validation_accuracy")),
    ("Learning rate", ("learning_rate",)),
)


def read_series(exp_dir: Path) -> tuple[dict[str, tuple[list, list]], list[dict]]:
    """Per metric (steps, values) of rank 0, and the error events with their step."""
    series: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    errors = []
    last_step = 0
    for event in iter_events(exp_dir):
        kind = event["kind"]
        if kind == "metrics" and event.get("rank") in (None, 0):
            step = event.get("step")
            step = last_step if step is None else step
            last_step = step
            for key, raw in event["data"].items():
                value = number(raw)
                if value is not None:
                    xs, ys = series[key]
                    xs.append(step)
                    ys.append(value)
        elif kind == "error":
            errors.append({"step": event.get("step") or last_step, **event["data"]})
    return dict(series), errors


def plot_experiment(exp_dir: Path, output: Path | None = None) -> Path:
    """Draw the run into ``output`` (format from the extension); returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series, errors = read_series(exp_dir)
    panels = [(title, [k for k in keys if k in series]) for title, keys in PANELS]
    panels = [(t, ks) for t, ks in panels if ks]
    fig, axes = plt.subplots(len(panels) + 1, 1, figsize=(10, 3 * (len(panels) + 1)), squeeze=False)
    fig.suptitle(f"Training progress - {exp_dir.name}")
    for ax, (title, keys) in zip(axes[:, 0], panels, strict=False):
        for key in keys:
            xs, ys = series[key]
            ax.plot(xs, ys, label=key, marker="o" if len(xs) < 50 else None, markersize=3)
        for err in errors:
            ax.axvline(err["step"], color="red", linestyle="--", alpha=0.6)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")
    _errors_panel(axes[-1, 0], errors)
    fig.tight_layout()
    out = output or exp_dir / layout.PLOTS / "training_progress.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _errors_panel(ax, errors: list[dict]) -> None:
    counts: dict[str, int] = defaultdict(int)
    for err in errors:
        counts[err.get("category") or "unknown"] += 1
    ax.set_title("Errors by category")
    if counts:
        ax.bar(list(counts), list(counts.values()), color="orange")
        ax.tick_params(axis="x", rotation=30)
    else:
        ax.text(0.5, 0.5, "no errors", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
