"""Supervisor ingest rate from a child flooding its stdout with events (budget: >= 100,000 events/s).

The rate is events over the extra wall time the flood costs compared with an empty run of the same child,
so interpreter start-up is not counted; the child's own write time shows whether it was held back.
"""

from _common import run_child, verdict

N = 500_000
BUDGET = 100_000

if __name__ == "__main__":
    _, base = run_child("flood.py", "0", under_tlog=True)
    report, wall = run_child("flood.py", str(N), under_tlog=True)
    rate = report["events"] / max(wall - base, 1e-9)
    print(f"ingest: {report['events']:,} events in {wall - base:.2f} s beyond start-up = {rate:,.0f} events/s "
          f"(budget {BUDGET:,}/s: {verdict(rate, BUDGET, higher_is_better=True)}); "
          f"the child spent {report['write_s']:.2f} s writing")
