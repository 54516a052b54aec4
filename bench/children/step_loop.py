"""Child: a real PyTorch training loop with a fixed per-step cost; reports the median step time."""

import json
import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
width = int(sys.argv[1]) if len(sys.argv) > 1 else 256
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 1500
torch.manual_seed(0)
data = TensorDataset(torch.randn(steps * 32, 64), torch.randn(steps * 32, 1))
loader = DataLoader(data, batch_size=32)
model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.MSELoss()
times = []
t_prev = time.perf_counter()
for x, y in loader:
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    now = time.perf_counter()
    times.append(now - t_prev)
    t_prev = now
times = sorted(times[100:])
with open(os.environ["BENCH_OUT"], "w") as f:
    json.dump({"median_ms": times[len(times) // 2] * 1e3, "mean_ms": sum(times) / len(times) * 1e3}, f)
