"""Which value a step keeps when two metrics events of that step carry the same metric: the one rule of
the three folds that must agree (training_metrics.csv in ``metrics_rows``, the plot's columns in
``columns``, the summary in ``summary``).

Why: the probe captures the loss on its own (``src: "auto"``) and a script may log its own value of the same
name at the same step with ``tlog.log``; what the script says is its number, so an explicit value wins over
the probe's whichever comes first, and between two of the same kind the later one wins.
"""

from __future__ import annotations


def is_explicit(event: dict) -> bool:
    """A value the script logged itself (``tlog.log``, a framework adapter, a scraped line), not the probe's."""
    return event.get("src") != "auto"


def replaces(new_explicit: bool, old_explicit: bool) -> bool:
    """Whether a value arriving for a metric at a step replaces the one already held for that step."""
    return new_explicit or not old_explicit
