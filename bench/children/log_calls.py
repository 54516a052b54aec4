"""Child: time ``tlog.log()`` of 4 scalars, per call, and report median/p99 to $BENCH_OUT."""

import json
import os
import time

import tlog

N = int(os.environ.get("BENCH_N", "20000"))
samples = []
clock = time.perf_counter_ns
for i in range(N):
    t0 = clock()
    tlog.log(loss=0.5, accuracy=0.9, lr=1e-3, grad=1.5, step=i)
    samples.append(clock() - t0)
samples.sort()
with open(os.environ["BENCH_OUT"], "w") as f:
    json.dump({"n": N, "median_us": samples[N // 2] / 1e3, "p99_us": samples[int(N * 0.99)] / 1e3}, f)
