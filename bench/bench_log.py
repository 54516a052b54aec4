"""Per-call cost of ``tlog.log()`` with 4 scalars in a child under ``tlog run`` (budget: 2 us median): a script
without torch (lines held and written together: emitter.HOLD_LINES, HOLD_S) and a training script (the probe
holds calls for its report)."""

from _common import run_child, verdict

BUDGET_US = 2.0

if __name__ == "__main__":
    for label, args in (("no torch: lines held, batched", ()), ("torch probe: held for the report", ("torch",))):
        report, _ = run_child("log_calls.py", *args, under_tlog=True)
        print(f"tlog.log(4 scalars) under tlog run, {label}: median {report['median_us']:.2f} us, "
              f"p99 {report['p99_us']:.2f} us over {report['n']} calls "
              f"(budget {BUDGET_US} us median: {verdict(report['median_us'], BUDGET_US)})")
