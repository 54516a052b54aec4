"""training_metrics.csv: one row per step, in the seed's columns, then ``step`` and the rest.

Metrics events of the same step (the probe's loss and the script's own
``tlog.log(accuracy=...)``) merge into one row; an explicit value wins over an
auto-captured one of the same name (``tlog.store.stepmerge``).  The row is written when the next step
begins, so a row is complete when it reaches the file.  The seed's derived
columns (training_time, best_loss, best_accuracy, patience_counter,
memory_usage, gpu_memory) are filled here.

In a distributed run the ranks' events interleave, so each rank keeps its own
open row and its own running bests (parked while another rank's events come
in); a rank's memory columns are its own processes' (``rank<r>_rss_mb`` of the
resource samples) when the monitor knows them, else the whole node's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tlog.protocol import number
from tlog.store import stepmerge
from tlog.store.csvfile import CsvTable

SEED_COLUMNS = (
    "timestamp", "epoch", "batch", "total_batches", "loss", "accuracy", "learning_rate", "gradient_norm",
    "memory_usage", "gpu_memory", "training_time", "validation_loss", "validation_accuracy", "best_loss",
    "best_accuracy", "patience_counter",
)
_DERIVED = frozenset({"timestamp", "training_time", "best_loss", "best_accuracy", "patience_counter",
                      "memory_usage", "gpu_memory"})
_RANK_STATE = ("pending", "key", "explicit", "total_batches", "best_loss", "best_accuracy", "best_val", "patience")


class MetricsRows:
    COLUMNS = (*SEED_COLUMNS, "step")

    def __init__(self, table: CsvTable) -> None:
        self.table = table
        self.pending: dict[str, Any] | None = None
        self.last_row: dict[str, Any] | None = None
        self.last_t = 0.0
        self.explicit: set[str] | tuple = ()
        self.key: tuple[Any, Any] = (None, None)
        self.t0: float | None = None
        self.total_batches: Any = None
        self.memory_mb: float | None = None
        self.gpu_mb: float | None = None
        self.best_loss: float | None = None
        self.best_accuracy: float | None = None
        self.best_val: float | None = None
        self.patience: int | None = None
        self._parked: dict[Any, tuple] = {}  # rank -> its _RANK_STATE values, while another rank's events come
        self.rank_mb: dict[int, tuple[float | None, float | None]] = {}  # rank -> (RSS, GPU) of its processes
        self._second = -1
        self._second_text = ""

    def add(self, event: dict) -> None:
        step, rank = event.get("step"), event.get("rank")
        data = event["data"]
        if rank != self.key[1]:
            self._switch(rank)
        if self.pending is not None:
            if step is not None and step == self.key[0] and rank == self.key[1]:
                self._merge(self.pending, event, data)
                return
            self._write()
        if self.t0 is None:
            self.t0 = event["t"]
        row = {"step": step, "epoch": event.get("epoch"), "batch": event.get("batch")}
        if rank is not None:
            row["rank"] = rank
        row.update(data)
        if not _DERIVED.isdisjoint(data):
            for key in _DERIVED.intersection(data):
                del row[key]
        row["_t"] = self.last_t = event["t"]
        self.pending = row
        self.key = (step, rank)
        self.explicit = set(data) if stepmerge.is_explicit(event) else ()
        if step is None:
            self._write()

    def _switch(self, rank: Any) -> None:
        """Another rank's event: park this rank's open row and running values, take out that rank's."""
        self._parked[self.key[1]] = tuple(getattr(self, name) for name in _RANK_STATE)
        state = self._parked.pop(rank, None)
        if state is None:
            state = (None, (None, rank), (), None, None, None, None, None)
        for name, value in zip(_RANK_STATE, state, strict=True):
            setattr(self, name, value)

    def _merge(self, row: dict[str, Any], event: dict, data: dict) -> None:
        """A second event of the same step (its ``row`` pending): explicit values win over the probe's."""
        row["_t"] = self.last_t = event["t"]
        for key in ("epoch", "batch"):
            value = event.get(key)
            if value is not None:
                row[key] = value
        if not stepmerge.is_explicit(event):
            for key, value in data.items():
                if key not in _DERIVED and stepmerge.replaces(False, key in self.explicit):
                    row[key] = value
            return
        explicit = self.explicit = self.explicit if isinstance(self.explicit, set) else set()
        for key, value in data.items():
            if key not in _DERIVED:  # an explicit value replaces what the step held (stepmerge.replaces)
                row[key] = value
                explicit.add(key)

    def resources(self, sample: dict) -> None:
        """The latest resource sample, for the seed's memory columns."""
        rss = sample.get("rss_mb")
        if rss is not None:
            self.memory_mb = rss
        gpu = [v for k, v in sample.items() if k.startswith("gpu") and k.endswith("_used_mb")
               and isinstance(v, (int, float))]
        if gpu:
            self.gpu_mb = sum(gpu)
        for key, value in sample.items():
            if key.startswith("rank") and key.endswith("_rss_mb") and key[4:-7].isdigit():
                rank = int(key[4:-7])
                self.rank_mb[rank] = (value, sample.get(f"rank{rank}_gpu_mb"))

    def _write(self) -> None:
        row = self.pending
        self.pending = None
        if row is None:
            return
        t = row.pop("_t")
        self.last_row = row
        if "total_batches" in row:
            self.total_batches = row["total_batches"]
        else:
            row["total_batches"] = self.total_batches
        row["timestamp"] = self._stamp(t)
        row["training_time"] = round(t - self.t0, 3)
        rank = row.get("rank")
        own = self.rank_mb.get(rank) if self.rank_mb and rank is not None else None
        row["memory_usage"] = self.memory_mb if own is None else own[0]
        row["gpu_memory"] = self.gpu_mb if own is None or own[1] is None else own[1]
        self._bests(row)
        self.table.append(row)

    def _stamp(self, t: float) -> str:
        """ISO timestamp with milliseconds; the date-time part is formatted once per second."""
        second = int(t)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second).isoformat()
        return f"{self._second_text}.{int((t - second) * 1000):03d}"

    def _bests(self, row: dict) -> None:
        loss = row.get("loss")
        if loss is not None:
            loss = loss if loss.__class__ is float else number(loss)
            if loss is not None and loss - loss == 0 and (self.best_loss is None or loss < self.best_loss):
                self.best_loss = loss
        acc = row.get("accuracy")
        if acc is not None:
            acc = acc if acc.__class__ is float else number(acc)
            if acc is not None and acc - acc == 0 and (self.best_accuracy is None or acc > self.best_accuracy):
                self.best_accuracy = acc
        val = row.get("validation_loss")
        if val is not None:
            val = number(val)
            if val is not None and val - val == 0 and (self.best_val is None or val < self.best_val):
                self.best_val, self.patience = val, 0
            elif val is not None:
                self.patience = (self.patience or 0) + 1
        row["best_loss"] = self.best_loss
        row["best_accuracy"] = self.best_accuracy
        row["patience_counter"] = self.patience

    def flush(self) -> None:
        self.table.flush()

    def complete(self) -> None:
        """Write every open row (of every rank): an attempt ended, so none of them can grow any more."""
        self._write()
        for rank in [r for r, state in self._parked.items() if state[0] is not None]:
            self._switch(rank)
            self._write()

    def close(self) -> None:
        self.complete()
        self.table.close()
