"""The summary of a run, folded event by event.

One accumulator serves the writer (live and final training_summary.json) and
the reports (``tlog summary`` on any experiment, running or crashed), so the
two can never disagree.  O(1) work and memory per event.
"""

from __future__ import annotations

import math
from itertools import compress, repeat
from operator import is_not
from typing import Any

from tlog.direction import config_modes, metric_mode
from tlog.protocol import number
from tlog.store import rankstats, spike, stepmerge

_PEAK_KEYS = {"rss_max_mb": "rss_mb", "rss_peak_mb": "rss_mb", "mem_limit_mb": "mem_limit_mb"}
_CONTEXT_KEYS = frozenset({"total_batches", "total_epochs"})
_ERROR_KEYS = ("id", "category", "phase", "cause", "remedy", "error_message", "attempt", "step", "epoch",
               "recovery_attempted", "recovery_successful", "recovery_time", "rank", "root_cause_rank",
               "peer_lost", "node")


class MetricStats:
    __slots__ = ("best", "best_step", "count", "last", "last_step", "max", "min", "mode", "nonfinite")

    def __init__(self, mode: str | None) -> None:
        self.mode = mode
        self.last: float | None = None
        self.last_step: int | None = None
        self.best: float | None = None
        self.best_step: int | None = None
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.nonfinite = 0

    def add(self, value: float, step: int | None) -> None:
        self.count += 1
        self.last = value
        self.last_step = step
        if value - value != 0:
            self.nonfinite += 1
            return
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        mode = self.mode
        if mode is not None and (self.best is None or (value < self.best if mode == "min" else value > self.best)):
            self.best = value
            self.best_step = step

    def add_many(self, values: list[Any], steps: list[int]) -> None:
        """A window's column (numbers, non-finite markers, None where a step has no value), at ``steps``."""
        try:  # a dense finite column (the usual one) is folded at C speed: sum, min, max over the list
            total = sum(values)
            fast = total - total == 0
        except TypeError:
            fast = False
        if not fast and None in values:  # a sparse column (a learning rate where it changed): its values only
            present = list(map(is_not, values, repeat(None)))
            kept = list(compress(values, present))
            if kept:
                self.add_many(kept, list(compress(steps, present)))
            return
        if not fast:
            for value, step in zip(values, steps, strict=True):
                value = value if value.__class__ is float else number(value)
                if value is not None:
                    self.add(value, step)
            return
        self.count += len(values)
        self.last, self.last_step = values[-1], steps[-1]
        low, high = min(values), max(values)
        self.min, self.max = min(self.min, low), max(self.max, high)
        mode = self.mode
        if mode is not None:
            best = low if mode == "min" else high
            if self.best is None or (best < self.best if mode == "min" else best > self.best):
                self.best, self.best_step = best, steps[values.index(best)]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"last": _json_num(self.last), "last_step": self.last_step, "count": self.count}
        if self.count > self.nonfinite:
            out["min"], out["max"] = self.min, self.max
        if self.mode is not None:
            out.update(mode=self.mode, best=self.best, best_step=self.best_step)
        if self.nonfinite:
            out["nonfinite"] = self.nonfinite
        return out

    def state(self) -> dict[str, Any]:
        """Every slot, non-finite floats as the wire's strings (JSON has no inf), for ``from_state``."""
        values = {name: getattr(self, name) for name in self.__slots__}
        return {name: _json_num(v) if v.__class__ is float else v for name, v in values.items()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MetricStats:
        stats = cls(state["mode"])
        for name in cls.__slots__:
            value = state[name]
            setattr(stats, name, number(value) if isinstance(value, str) and name != "mode" else value)
        return stats


def outcome(status: str, restarts: int) -> str:
    """The run's story in one word: ``status`` says how the last attempt ended, this adds the restarts."""
    return "restarted-then-finished" if status == "finished" and restarts > 0 else status


def merge_error_update(records: list[dict[str, Any]], update: dict[str, Any]) -> bool:
    """Apply an error event whose data has ``update_of``: amend the record with that ``id`` in place.

    A record is written when the failure happens and completed later (did the restart or the script's own
    recovery get past the failing step?); the update is its own event so events.jsonl stays append-only.
    Returns False when no record has that id (an update never creates a record).
    """
    target = update.get("update_of")
    if target is None:
        return False
    for record in reversed(records):
        if record.get("id") == target:
            record.update({k: v for k, v in update.items() if k not in ("update_of", "id")})
            return True
    return False


def _json_num(value: float | None) -> float | str | None:
    if value is None or value - value == 0:
        return value
    return "nan" if value != value else ("inf" if value > 0 else "-inf")  # noqa: PLR0124


class SummaryBuilder:
    """Feed events with ``add``; ``result()`` gives the summary document."""

    def __init__(self, experiment: str = "", modes: dict[str, str] | None = None) -> None:
        self.experiment = experiment
        self.modes = modes or {}
        self.metrics: dict[str, MetricStats] = {}
        self.first_t: float | None = None
        self.last_t: float | None = None
        self.max_step: int | None = None
        self.max_epoch: int | None = None
        self.rows = 0
        self.meta: dict[str, Any] = {}
        self.config: dict[str, Any] = {}
        self.attempts: list[dict[str, Any]] = []
        self.status = "unknown"
        self.stop_reason: str | None = None
        self.malformed_events = 0
        self.checkpoints = 0
        self.newest_checkpoint: dict[str, Any] | None = None
        self.errors: list[dict[str, Any]] = []
        self.errors_total = 0
        self.warnings: dict[str, int] = {}
        self.peaks: dict[str, float] = {}
        self.peak_detail: dict[str, Any] | None = None
        self.malformed = 0
        self.span: list[Any] | None = None  # [t, step] of the first metrics event, then [t] of the last
        # The probe's values of the newest step, folded once a later step shows no explicit value replaced
        # them: ``tlog.log`` of the same name at the same step wins (as in the CSV), even when it comes after.
        self.held_auto: list[Any] = [None, {}]  # [step, {name: value}]
        self.explicit_step: list[Any] = [None, []]  # [step, names] of the newest explicit values
        self.ranks: dict[str, dict[str, Any]] = {}  # distributed runs: per rank (tlog.store.rankstats)
        self.nodes: dict[str, dict[str, Any]] = {}  # multi-node runs: the supervisors of nodes 1, 2, ...
        self.spike: list[Any] = spike.new()  # the loss's largest single-step spike (tlog.store.spike)

    def state(self) -> dict[str, Any]:
        """Everything the fold knows, as JSON.  Saved with the byte offset of events.jsonl it covers, it lets
        a report on a running or crashed run fold only the events written since (``from_state``)."""
        state = {key: value for key, value in vars(self).items() if key != "metrics"}
        state["metrics"] = {name: st.state() for name, st in self.metrics.items()}
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SummaryBuilder | None:
        """The builder ``state()`` described, or None when it was saved by a different version of this class
        (other fields, or other types): the caller then folds from the first event."""
        builder = cls()
        fresh = vars(builder)
        if not isinstance(state, dict) or set(state) != set(fresh):
            return None
        try:
            metrics = {name: MetricStats.from_state(s) for name, s in state["metrics"].items()}
        except (KeyError, TypeError, AttributeError):
            return None
        for key, value in state.items():
            default = fresh[key]
            if default is not None and value is not None and not isinstance(value, type(default)):
                return None
            setattr(builder, key, value)
        builder.metrics = metrics
        return builder

    def add(self, event: dict) -> None:
        t = event.get("t")
        if self.first_t is None:
            self.first_t = t
        self.last_t = t
        kind = event["kind"]
        if kind == "metrics":
            self._metrics(event)
        else:
            handler = _HANDLERS.get(kind)
            if handler is not None:
                handler(self, event)

    def _metrics(self, event: dict) -> None:
        rank = event.get("rank")
        if rank is not None:
            rankstats.rank_metrics(self.ranks, rank, event)
            if rank != 0:  # the run's own series are rank 0's
                return
        steps = event.get("steps")
        if steps is not None:
            self._window(event, steps)
        step = event.get("step")
        if step is not None and (self.max_step is None or step > self.max_step):
            self.max_step = step
        epoch = event.get("epoch")
        if epoch is not None and (self.max_epoch is None or epoch > self.max_epoch):
            self.max_epoch = epoch
        if self.span is None:
            self.span = [event.get("t"), step, event.get("t")]
        else:
            self.span[2] = event.get("t")
        self.rows += 1
        held_step, held = self.held_auto
        if held and step is not None and step != held_step:
            for key, value in held.items():
                self._fold(key, value, held_step)
            held.clear()
        auto = not stepmerge.is_explicit(event)
        explicit = self.explicit_step
        if not auto and step is not None and explicit[0] != step:
            explicit[0], explicit[1] = step, []
        for key, raw in event["data"].items():
            if key in _CONTEXT_KEYS:
                continue
            value = raw if raw.__class__ is float else number(raw)
            if value is None:
                continue
            if step is None:
                self._fold(key, value, step)
            elif auto:
                if stepmerge.replaces(False, explicit[0] == step and key in explicit[1]):
                    held[key] = value
                    self.held_auto[0] = step
            else:  # folded at once: only a later explicit value could replace it (stepmerge.replaces)
                explicit[1].append(key)
                held.pop(key, None)  # the probe's value of this step, replaced
                self._fold(key, value, step)

    def _window(self, event: dict, steps: dict[str, list]) -> None:
        """The earlier steps of a window event (``protocol.step_rows``): final values, folded column by column."""
        rows = steps["step"]
        held_step, held = self.held_auto
        if held:
            for key, value in held.items():
                self._fold(key, value, held_step)
            held.clear()
        self.rows += len(rows)
        top = max(rows)
        if self.max_step is None or top > self.max_step:
            self.max_step = top
        if self.span is None:
            self.span = [event.get("t"), rows[0], event.get("t")]
        for key, column in steps.items():
            if key in ("step", "batch") or key in _CONTEXT_KEYS:
                continue
            st = self.metrics.get(key)
            if st is None:
                st = self.metrics[key] = MetricStats(metric_mode(key, self.modes))
            st.add_many(column, rows)
            if key == "loss":
                spike.add_many(self.spike, column, rows)

    def _fold(self, key: str, value: float, step: int | None) -> None:
        st = self.metrics.get(key)
        if st is None:
            st = self.metrics[key] = MetricStats(metric_mode(key, self.modes))
        st.add(value, step)
        if key == "loss":
            spike.add_many(self.spike, [value], [step])

    def _attempt(self, event: dict) -> None:
        if event.get("node"):  # another node's supervisor: its attempts are its own, the run's are node 0's
            rankstats.node_event(self.nodes, event)
            return
        data = event["data"]
        if data.get("event") == "start":
            self.attempts.append({"attempt": data.get("attempt", len(self.attempts) + 1),
                                  "start": event.get("t"), "pid": data.get("pid"),
                                  **{k: data[k] for k in ("resume_checkpoint", "resume_step") if k in data}})
            self.status = "running"
            self.stop_reason = None
        elif data.get("event") == "exit":
            if not self.attempts:
                self.attempts.append({"attempt": data.get("attempt", 1), "start": None})
            current = self.attempts[-1]
            current.update({k: data.get(k) for k in ("exit_code", "signal", "signal_name", "status", "cause",
                                                     "last_step")
                            if data.get(k) is not None})
            self.stop_reason = data.get("stop_reason")
            last = data.get("last_step")  # the live page's: the steps that really ran, reported or not
            if isinstance(last, int) and (self.max_step is None or last > self.max_step):
                self.max_step = last
            self.malformed_events += data.get("malformed_events") or 0
            if data.get("peaks"):
                self.peak_detail = data["peaks"]
            current["end"] = event.get("t")
            # A restart follows: the run is not over, even for a reader of the live summary.
            self.status = "restarting" if data.get("next") == "restart" else data.get("status", "unknown")
        elif data.get("event") == "stop":  # a restart called off after the exit (a signal during the backoff)
            self.status = data.get("status", self.status)
            self.stop_reason = data.get("stop_reason")

    def _restart(self, event: dict) -> None:
        if not event.get("node"):
            self.status = "restarting"

    def _meta(self, event: dict) -> None:
        rank = event.get("rank")
        if rank is not None:
            rankstats.rank_meta(self.ranks, event)
        if event.get("node") and "supervisor_pid" in event["data"]:
            rankstats.node_event(self.nodes, event)
        elif rank in (None, 0):
            self.meta.update(event["data"])

    def _config(self, event: dict) -> None:
        """Configuration; the metric modes of the settings file the run used (saved by ``tlog run`` in
        ``tlog.settings.metric_modes``) decide what 'best' means for the metrics that follow.  A distributed
        run's configuration is rank 0's (the other ranks repeat it, with their own pid)."""
        if event.get("rank") not in (None, 0):
            return
        data = event["data"]
        self.config.update(data)
        modes = config_modes(data)
        if modes:
            self.modes = {**self.modes, **modes}

    def _checkpoint(self, event: dict) -> None:
        self.checkpoints += 1
        self.newest_checkpoint = {"path": event["data"].get("path"), "bytes": event["data"].get("bytes"),
                                  "step": event.get("step"), "epoch": event.get("epoch"), "t": event.get("t")}

    def _error(self, event: dict) -> None:
        data = event["data"]
        if "update_of" in data:
            merge_error_update(self.errors, {k: v for k, v in data.items() if k in _ERROR_KEYS or k == "update_of"})
            return
        self.errors_total += 1
        if len(self.errors) < 100:
            self.errors.append({k: data.get(k) for k in _ERROR_KEYS})

    def _warning(self, event: dict) -> None:
        category = event["data"].get("category") or "other"
        self.warnings[category] = self.warnings.get(category, 0) + 1

    def _system(self, event: dict) -> None:
        """Peaks, not samples: the highest memory of any window, the lowest headroom."""
        peaks = self.peaks
        for key, raw in event["data"].items():
            if raw.__class__ not in (int, float):
                continue
            if key in _PEAK_KEYS or (key.startswith("gpu") and key.endswith(("_max_mb", "_total_mb"))):
                name = _PEAK_KEYS.get(key, key)
                if raw > peaks.get(name, -1.0):
                    peaks[name] = raw
            elif key == "headroom_mb" and raw < peaks.get("headroom_min_mb", float("inf")):
                peaks["headroom_min_mb"] = raw
            elif key.startswith("rank") and key.endswith("_mb") and raw > peaks.get(key, -1.0):
                peaks[key] = raw  # rank<r>_rss_mb, rank<r>_gpu_mb: the processes of one rank

    def result(self) -> dict[str, Any]:
        by_category: dict[str, int] = {}
        for err in self.errors:
            cat = err.get("category") or "unknown"
            by_category[cat] = by_category.get(cat, 0) + 1
        duration = (self.last_t - self.first_t) if self.first_t is not None and self.last_t is not None else None
        status = rankstats.merged_status(self.status, self.nodes)
        ranks = rankstats.rank_rows(self.ranks) if len(self.ranks) > 1 else []
        return {
            "experiment": self.experiment,
            "status": status,
            "outcome": outcome(status, len(self.attempts) - 1),
            "restarts": max(len(self.attempts) - 1, 0),
            "stop_reason": self.stop_reason,
            "attempts": self.attempts,
            "started": self.first_t,
            "ended": self.last_t if status not in ("running", "unknown") else None,
            "duration_s": duration,
            "steps": self.max_step,
            "epochs": None if self.max_epoch is None else self.max_epoch + 1,
            "steps_per_s": self._steps_per_s(),
            "rows": self.rows,
            "metrics": self._metric_dicts(),
            "spike": spike.result(self.spike, "loss"),
            "checkpoints": {"count": self.checkpoints, "newest": self.newest_checkpoint},
            "errors": {"count": self.errors_total, "by_category": by_category, "items": self.errors[-20:]},
            "warnings": {"count": sum(self.warnings.values()), "by_category": dict(self.warnings)},
            "malformed_events": self.malformed_events,  # marked lines refused at the boundary, kept as output
            "resources": {"peaks": dict(self.peaks), "detail": self.peak_detail},
            "command": self.meta.get("argv"),
            "meta": self.meta,
            "config": self.config,
            **({"ranks": ranks, "samples_per_s": rankstats.job_samples_per_s(ranks)} if ranks else {}),
            **({"nodes": [self.nodes[k] for k in sorted(self.nodes, key=int)]} if self.nodes else {}),
        }

    def _metric_dicts(self) -> dict[str, dict[str, Any]]:
        """Every metric as folded, the held values of the newest step included (in copies: an explicit value
        of that step may still come)."""
        step, held = self.held_auto
        out = {}
        for name in {**self.metrics, **held}:
            st = self.metrics.get(name)
            if name in held:
                copy = MetricStats.from_state(st.state()) if st is not None else MetricStats(
                    metric_mode(name, self.modes))
                copy.add(held[name], step)
                st = copy
            assert st is not None  # a name is in the metrics or held
            out[name] = st.to_dict()
        return out

    def _steps_per_s(self) -> float | None:
        """Throughput between the first and the last metrics event (restart pauses included)."""
        if self.span is None or self.span[1] is None or self.max_step is None:
            return None
        t0, step0, t1 = self.span
        return (self.max_step - step0) / (t1 - t0) if t1 is not None and t0 is not None and t1 > t0 else None


_HANDLERS = {
    "attempt": SummaryBuilder._attempt,
    "restart": SummaryBuilder._restart,
    "meta": SummaryBuilder._meta,
    "config": SummaryBuilder._config,
    "checkpoint": SummaryBuilder._checkpoint,
    "error": SummaryBuilder._error,
    "warning": SummaryBuilder._warning,
    "system": SummaryBuilder._system,
}
