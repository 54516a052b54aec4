"""Step-time ratio of a real PyTorch loop under ``tlog run`` vs plain python, interleaved (budget: <= 1.02).

Two step sizes: ~1 ms (width 256) and ~0.1 ms (width 16).  Each pair runs plain then instrumented back to
back, so drift in machine load affects both; the figure is the median of the per-pair ratios.
"""

import sys

from _common import median, run_child, verdict

PAIRS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
BUDGET = 1.02

if __name__ == "__main__":
    for width, steps, label in ((256, 1500, "~1 ms"), (16, 4000, "~0.1 ms")):
        ratios, plain_ms, tlog_ms = [], [], []
        for _ in range(PAIRS):
            plain, _ = run_child("step_loop.py", str(width), str(steps), under_tlog=False)
            inst, _ = run_child("step_loop.py", str(width), str(steps), under_tlog=True)
            plain_ms.append(plain["median_ms"])
            tlog_ms.append(inst["median_ms"])
            ratios.append(inst["median_ms"] / plain["median_ms"])
        ratio = median(ratios)
        print(f"{label} step: plain {median(plain_ms):.3f} ms, tlog run {median(tlog_ms):.3f} ms, "
              f"median ratio {ratio:.3f} over {PAIRS} pairs (budget {BUDGET}: {verdict(ratio, BUDGET)})")
