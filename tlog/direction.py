"""Which direction is best for a metric: the one rule every view asks (panel, summary, compare, plot).

The name is split into words (``val_mse`` → val, mse; ``train/nll`` → train, nll; ``valLoss`` → val, loss;
``top1_acc`` → top, acc), so a word inside another (``mAP`` in ``bitmap_size``) does not count.  A
word that names a setting rather than a result (lr, momentum, beta, grad ...) means no direction; then a
lower-is-better word wins over a higher-is-better one (``acc_loss`` is a loss); a name with neither has no
direction, so no view invents a "best" for it.  ``[metric_modes]`` in tlog.toml overrides by exact name.
"""

from __future__ import annotations

import re
from typing import Any

LOWER = frozenset({"loss", "losses", "error", "errors", "err", "mse", "mae", "rmse", "mape", "wer", "cer",
                   "ter", "nll", "perplexity", "ppl", "time", "latency", "duration", "eer", "fid", "bpc",
                   "bpd", "cost", "regret", "distance", "divergence", "kl"})
HIGHER = frozenset({"acc", "accuracy", "f1", "auc", "roc", "bleu", "rouge", "meteor", "map", "iou", "miou",
                    "dice", "precision", "recall", "r2", "score", "reward", "return", "throughput", "ndcg",
                    "mrr", "psnr", "ssim", "em", "top1", "top5"})
NEUTRAL = frozenset({"lr", "learning", "momentum", "beta", "beta1", "beta2", "betas", "eps", "epsilon",
                     "grad", "gradient", "wd", "decay", "scale", "temperature", "warmup", "clip"})
NOT_RESULTS = frozenset({"epoch", "step", "batch", "total_batches", "total_epochs", "global_step"})
MODES = ("min", "max")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SPLIT = re.compile(r"[^a-z0-9]+")


def words(name: str) -> set[str]:
    """The name's words, lower-cased, with and without a trailing number (``acc1`` → acc1, acc)."""
    found: set[str] = set()
    for text in (name.lower(), _CAMEL.sub("_", name).lower()):
        for word in _SPLIT.split(text):
            if word:
                found.add(word)
                bare = word.rstrip("0123456789")
                if bare:
                    found.add(bare)
    return found


def metric_mode(name: str, overrides: dict[str, str] | None = None) -> str | None:
    """'min' when lower is better, 'max' when higher is, None when 'best' means nothing for this name."""
    if overrides and overrides.get(name) in MODES:
        return overrides[name]
    if name.lower() in NOT_RESULTS:
        return None
    found = words(name)
    if found & NEUTRAL:
        return None
    if found & LOWER:
        return "min"
    if found & HIGHER:
        return "max"
    return None


def constant_setting(mode: str | None, low: float | None, high: float | None, count: int) -> bool:
    """A value logged more than once that never moved and whose name (``mode``, from ``metric_mode``) names
    no result — Adam's betas, a fixed lr: a fact of the run's configuration, shown once, not a curve or a
    metric row with a min and a max."""
    return count > 1 and mode is None and low is not None and low == high


def config_modes(data: dict[str, Any]) -> dict[str, str] | None:
    """The ``[metric_modes]`` a run used, from its config event (``tlog run`` saves them in tlog.settings)."""
    section = data.get("tlog")
    settings = section.get("settings") if isinstance(section, dict) else None
    modes = settings.get("metric_modes") if isinstance(settings, dict) else None
    if not isinstance(modes, dict):
        return None
    return {k: v for k, v in modes.items() if v in MODES}
