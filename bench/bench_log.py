"""Per-call cost of ``tlog.log()`` with 4 scalars in a child under ``tlog run`` (budget: 3 us median)."""

from _common import run_child, verdict

BUDGET_US = 3.0

if __name__ == "__main__":
    report, _ = run_child("log_calls.py", under_tlog=True)
    print(f"tlog.log(4 scalars) under tlog run: median {report['median_us']:.2f} us, p99 {report['p99_us']:.2f} us "
          f"over {report['n']} calls (budget {BUDGET_US} us median: {verdict(report['median_us'], BUDGET_US)})")
