"""Distributed runs in the text reports: a line per rank, and who failed first.

A straggler or a diverging rank shows as the row whose step, loss or step rate differs from the others';
the rank that failed first is marked, so the table answers "which rank?" before ``tlog errors`` says why.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from tlog.views.fmt import fmt_num


def print_ranks(s: dict[str, Any], console: Console) -> None:
    """The summary's per-rank table (only for runs with more than one rank)."""
    rows = s.get("ranks") or []
    if len(rows) < 2:
        return
    failed = _failed_ranks(s)
    peaks = (s.get("resources") or {}).get("peaks") or {}
    nodes = {r.get("node") for r in rows} - {None}
    head = f"  ranks       {len(rows)}" + (f" on {len(nodes)} nodes" if len(nodes) > 1 else "")
    if s.get("samples_per_s"):
        head += f"   job throughput {fmt_num(s['samples_per_s'])} samples/s"
    console.print(head, highlight=False, markup=False, soft_wrap=True)
    table = Table(box=None, padding=(0, 0, 0, 2), show_edge=False)
    columns = ["rank", *(["node"] if len(nodes) > 1 else []), "host", "step", "loss", "steps/s", "RAM peak", ""]
    for col in columns:
        table.add_column(col, justify="left" if col in ("host", "") else "right",
                         no_wrap=col not in ("host", ""), overflow="fold")
    for r in rows:
        rank = r["rank"]
        rss = peaks.get(f"rank{rank}_rss_mb")
        table.add_row(str(rank), *([fmt_num(r.get("node"))] if len(nodes) > 1 else []), str(r.get("host") or "n/a"),
                      fmt_num(r.get("last_step")), fmt_num(r.get("loss")), fmt_num(r.get("steps_per_s")),
                      f"{fmt_num(rss)} MB" if rss is not None else "n/a", failed.get(rank, ""))
    console.print(table)


def _failed_ranks(s: dict[str, Any]) -> dict[int, str]:
    """rank -> what the error records say about it: the root cause of a failure, by category."""
    out: dict[int, str] = {}
    for err in (s.get("errors") or {}).get("items") or []:
        rank = err.get("root_cause_rank")
        if isinstance(rank, int) and not err.get("peer_lost"):  # a node that only lost its peers knows no better
            out[rank] = f"✗ failed first (attempt {err.get('attempt')})"
    return out


def error_rank_lines(err: dict[str, Any]) -> list[str]:
    """``tlog errors``: which rank failed first, and what became of the others."""
    rank = err.get("root_cause_rank")
    if rank is None:
        return []
    where = f" on node {err['root_cause_node']}" if err.get("root_cause_node") is not None else ""
    lines = [f"    root cause: rank {rank}{where}" + (" (this node only lost its peers)" if where else "")]
    for c in err.get("consequences") or []:
        what = c.get("exception") or c.get("exit") or "ended"
        if c.get("exit_code") is not None and not c.get("exit"):
            what += f" (exit code {c['exit_code']})"
        after = f" {c['after_s']:+.3f} s" if isinstance(c.get("after_s"), (int, float)) else ""
        lines.append(f"      then rank {c.get('rank')}{after}: {what}")
    return lines
