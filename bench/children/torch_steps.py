"""Child: a tiny real torch training loop paced at a steady rate of optimizer steps, for a while (the torch
probe captures every step), printing a line of output every second and the steps it ran to $BENCH_OUT."""

import json
import os
import sys
import time

import torch

rate = float(sys.argv[1]) if len(sys.argv) > 1 else 1000.0
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
torch.set_num_threads(1)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
x, y = torch.randn(8, 4), torch.randn(8, 1)
period = 1.0 / rate
start = time.perf_counter()
step = 0
next_t = start
while time.perf_counter() - start < seconds:
    step += 1
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    if step % int(rate) == 0:
        print(f"step {step}", flush=True)
    next_t += period
    delay = next_t - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
if os.environ.get("BENCH_OUT"):
    with open(os.environ["BENCH_OUT"], "w") as f:
        json.dump({"steps": step, "steps_per_s": step / (time.perf_counter() - start)}, f)
