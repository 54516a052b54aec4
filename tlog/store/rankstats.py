"""The per-rank and per-node part of the summary fold, for distributed runs.

The experiment's main series are rank 0's (``SummaryBuilder`` skips the other ranks' metrics); this module
keeps, per rank, what shows a straggler or a diverging rank at a glance: its last step, last loss, step
rate and throughput, and where it ran.  Per node (multi-node runs, where each node's supervisor stamps
``node`` on its events), the node's own supervisor: host, attempts and how its last attempt ended.

State is plain JSON (string keys), because ``SummaryBuilder.state()`` saves it with the snapshot; every
update is O(1) per event.
"""

from __future__ import annotations

from typing import Any

from tlog import statuses
from tlog.protocol import number


def rank_metrics(ranks: dict[str, dict], rank: int, event: dict) -> None:
    """One metrics event of ``rank``: position, time, last loss and samples/s."""
    key = str(rank)
    stats = ranks.get(key)
    if stats is None:
        stats = ranks[key] = {"rank": rank, "rows": 0}
    stats["rows"] += 1
    step, t = event.get("step"), event.get("t")
    if step is not None:
        if "first_step" not in stats:
            stats["first_step"], stats["first_t"] = step, t
        stats["last_step"], stats["last_t"] = step, t
    data = event["data"]
    for name, out in (("loss", "loss"), ("samples_per_s", "samples_per_s")):
        value = data.get(name)
        if value is not None:
            value = number(value)
            if value is not None and value - value == 0:
                stats[out] = value


def rank_meta(ranks: dict[str, dict], event: dict) -> None:
    """A worker's ``meta`` event: where that rank runs."""
    stats = ranks.setdefault(str(event["rank"]), {"rank": event["rank"], "rows": 0})
    data = event["data"]
    for key in ("host", "pid"):
        if data.get(key) is not None:
            stats[key] = data[key]
    if event.get("node") is not None:
        stats["node"] = event["node"]
    if event.get("local_rank") is not None:
        stats["local_rank"] = event["local_rank"]


def node_event(nodes: dict[str, dict], event: dict) -> None:
    """An event of another node's supervisor (meta or attempt): kept apart from node 0's run-level story."""
    stats = nodes.setdefault(str(event["node"]), {"node": event["node"], "attempts": 0})
    data = event["data"]
    if event["kind"] == "meta":
        for key in ("host", "supervisor_pid"):
            if key in data:
                stats[key] = data[key]
    elif data.get("event") == "start":
        stats["attempts"] += 1
        stats["status"] = "running"
    elif data.get("event") in ("exit", "stop"):
        stats["status"] = "restarting" if data.get("next") == "restart" else data.get("status", "unknown")
        if data.get("exit_code") is not None:
            stats["exit_code"] = data["exit_code"]


def merged_status(status: str, nodes: dict[str, dict]) -> str:
    """The job's status: node 0's, unless another node ended worse (a job that failed on one node failed)."""
    if status != "finished":
        return status
    return next((n["status"] for n in nodes.values() if n.get("status") in statuses.BAD), status)


def rank_rows(ranks: dict[str, dict]) -> list[dict[str, Any]]:
    """Per-rank rows for the summary, by rank, each with its step rate over the steps it logged."""
    rows = []
    for stats in sorted(ranks.values(), key=lambda s: s["rank"]):
        row = dict(stats)
        t0, t1 = stats.get("first_t"), stats.get("last_t")
        if t0 is not None and t1 is not None and t1 > t0:
            row["steps_per_s"] = (stats["last_step"] - stats["first_step"]) / (t1 - t0)
        rows.append(row)
    return rows


def job_samples_per_s(rows: list[dict[str, Any]]) -> float | None:
    """What the job processes per second: the ranks' latest samples/s added up (each rank sees its shard)."""
    values = [r["samples_per_s"] for r in rows if r.get("samples_per_s") is not None]
    return sum(values) if values else None
