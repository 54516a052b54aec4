"""Child: a real PyTorch training loop with a fixed per-step cost; reports its median step time to $BENCH_OUT.

Both the wall-clock time and the thread's CPU time per step (median), and the mean CPU time per step: on a
shared machine the wall clock also counts the time other processes (the supervisor among them) held the CPU,
and a median leaves out the steps that report, which the mean keeps.

``step_loop.py 1ms STEPS``: an MLP of width 256 with Adam, batches of 32 collated by the DataLoader.
``step_loop.py 0.1ms STEPS``: the smallest real loop (one Linear, SGD, batches prepared in advance and
fetched by the DataLoader without collation), where tlog's per-step work weighs the most.
"""

import json
import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

torch.set_num_threads(1)
size = sys.argv[1] if len(sys.argv) > 1 else "1ms"
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
torch.manual_seed(0)


class Batches(Dataset):
    def __init__(self, n: int) -> None:
        self.x, self.y = torch.randn(n, 8, 16), torch.randn(n, 8, 1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple:
        return self.x[i], self.y[i]


if size == "1ms":
    loader = DataLoader(TensorDataset(torch.randn(steps * 32, 64), torch.randn(steps * 32, 1)), batch_size=32)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
else:
    loader = DataLoader(Batches(steps), batch_size=None)
    model = nn.Linear(16, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
loss_fn = nn.MSELoss()
wall, cpu = [], []
w_prev, c_prev = time.perf_counter_ns(), time.thread_time_ns()
for x, y in loader:
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    w_now, c_now = time.perf_counter_ns(), time.thread_time_ns()
    wall.append(w_now - w_prev)
    cpu.append(c_now - c_prev)
    w_prev, c_prev = w_now, c_now


def median_ms(ns: list[int]) -> float:
    ordered = sorted(ns[100:])
    return ordered[len(ordered) // 2] / 1e6


def mean_ms(ns: list[int]) -> float:
    """All steps after the first 100, reports and epoch ends included: what the run as a whole paid."""
    return sum(ns[100:]) / len(ns[100:]) / 1e6


with open(os.environ["BENCH_OUT"], "w") as f:
    json.dump({"median_ms": median_ms(wall), "cpu_median_ms": median_ms(cpu), "cpu_mean_ms": mean_ms(cpu)}, f)
