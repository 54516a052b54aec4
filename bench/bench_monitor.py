"""Cost of one resource sample: the sampler runs every second next to the training, so it must stay cheap.

Launches a small tree (a shell with four children, like a script with DataLoader
workers), takes a few hundred samples back to back and prints the median and
p99 wall time of one.  NVML is included when the machine has it.

    .venv/bin/python bench/bench_monitor.py [samples]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import psutil

from tlog.supervisor.monitor import Monitor


def main(samples: int = 300) -> None:
    tree = subprocess.Popen(["sh", "-c", "for i in 1 2 3 4; do sleep 60 & done; wait"])
    try:
        time.sleep(0.2)
        warnings: list[dict] = []
        monitor = Monitor(tree.pid, on_sample=lambda row: None, on_warning=warnings.append)
        monitor.baseline()
        row = monitor.sample_once()
        costs = []
        for _ in range(samples):
            began = time.perf_counter()
            monitor.sample_once()
            costs.append(time.perf_counter() - began)
        costs.sort()
        p99 = costs[min(len(costs) - 1, int(0.99 * len(costs)))]
        gpus = sum(1 for key in row if key.endswith("_method"))
        print(f"tree of {row['nprocs']} processes, {len(psutil.pids())} on the host, {gpus} GPU(s)"
              f"{'' if gpus else ' (' + warnings[0]['message'] + ')' if warnings else ''}")
        print(f"one sample over {samples}: median {statistics.median(costs) * 1e3:.3f} ms, "
              f"p99 {p99 * 1e3:.3f} ms")
    finally:
        tree.kill()
        tree.wait()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
