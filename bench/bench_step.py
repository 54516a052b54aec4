"""Step-time ratio of a real PyTorch loop under ``tlog run`` vs plain python, interleaved (budget: <= 1.02).

Two step sizes: ~1 ms (an MLP with Adam) and ~0.1 ms (one Linear with SGD; on a slow or shared machine it
takes longer, and the figure printed is what it took).  Each pair runs plain and instrumented back to back,
in alternating order, so drift in machine load affects both; each run's figures are its median step time, by the
wall clock and by the thread's CPU time, and its mean CPU time per step (the one to trust: the wall clock also
counts the time other processes held the CPU, and a median leaves out the steps that report); the result is the
median of the per-pair ratios.

``python bench_step.py [PAIRS] [TLOG RUN OPTIONS...]``, e.g. ``python bench_step.py 9 --log-every 1`` for the
cost of one row per step.
"""

import sys

from _common import median, run_child, verdict

PAIRS = int(sys.argv[1]) if len(sys.argv) > 1 else 9
TLOG_ARGS = tuple(sys.argv[2:])
BUDGET = 1.02

if __name__ == "__main__":
    for size, steps in (("1ms", 2000), ("0.1ms", 6000)):
        pairs = []
        for i in range(PAIRS):
            runs = {}
            for under in ((False, True) if i % 2 == 0 else (True, False)):
                runs[under], _ = run_child("step_loop.py", size, str(steps), under_tlog=under, tlog_args=TLOG_ARGS)
            pairs.append((runs[False], runs[True]))
        opts = " ".join(TLOG_ARGS) or "defaults"
        for key, what in (("median_ms", "wall median"), ("cpu_median_ms", "cpu median"), ("cpu_mean_ms", "cpu mean")):
            ratios = [inst[key] / plain[key] for plain, inst in pairs]
            ratio = median(ratios)
            print(f"~{size} step, {what}: plain {median([p[key] for p, _ in pairs]):.4f} ms, tlog run ({opts}) "
                  f"{median([i[key] for _, i in pairs]):.4f} ms, median ratio {ratio:.3f} over {PAIRS} pairs "
                  f"(per pair {min(ratios):.3f}..{max(ratios):.3f}; budget {BUDGET}: {verdict(ratio, BUDGET)})")
