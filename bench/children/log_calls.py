"""Child: time ``tlog.log()`` of 4 scalars, per call, and report median/p99 to $BENCH_OUT.

With ``torch`` as argument, the script trains a step first, so the torch probe runs and holds each call for
its next report (the usual case in a training script); a step every 1,000 calls sends them.
"""

import json
import os
import sys
import time

import tlog

TORCH = sys.argv[1:] == ["torch"]
if TORCH:
    import torch

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)


def step() -> None:
    model(torch.ones(2)).sum().backward()
    opt.step()


if TORCH:
    step()

N = int(os.environ.get("BENCH_N", "20000"))
samples = []
clock = time.perf_counter_ns
for i in range(N):
    t0 = clock()
    tlog.log(loss=0.5, accuracy=0.9, lr=1e-3, grad=1.5, step=i)
    samples.append(clock() - t0)
    if TORCH and i % 1000 == 999:
        step()
samples.sort()
with open(os.environ["BENCH_OUT"], "w") as f:
    json.dump({"n": N, "median_us": samples[N // 2] / 1e3, "p99_us": samples[int(N * 0.99)] / 1e3}, f)
