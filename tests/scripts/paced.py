"""A real torch loop whose step time is set per step, for the default (calibrated) hang detection.

--steps N             optimizer steps (default 15), one batch each
--sleep A [--to B]    each step sleeps A seconds, growing geometrically to B by the last step (a run that
                      slows down gradually)
--hang-at S           after step S, print READY and stop making progress (sleep for an hour)
--val-at S --val-s T  after step S, a validation pass (no_grad, a DataLoader of its own: the probe announces
                      it) of two batches taking T seconds in all
Prints "STEP <step> <time.time()>" after each step.
"""

import argparse
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=15)
p.add_argument("--sleep", type=float, default=0.1)
p.add_argument("--to", type=float, default=None)
p.add_argument("--hang-at", type=int, default=-1)
p.add_argument("--val-at", type=int, default=-1)
p.add_argument("--val-s", type=float, default=0.0)
args = p.parse_args()

torch.manual_seed(0)
x = torch.randn(4 * args.steps, 8)
y = x.sum(1, keepdim=True)
train = DataLoader(TensorDataset(x, y), batch_size=4)
val = DataLoader(TensorDataset(x[:8], y[:8]), batch_size=4)
model = nn.Linear(8, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
growth = (args.to / args.sleep) ** (1 / max(args.steps - 1, 1)) if args.to else 1.0
for step, (xb, yb) in enumerate(train, start=1):
    time.sleep(args.sleep * growth ** (step - 1))
    opt.zero_grad()
    nn.functional.mse_loss(model(xb), yb).backward()
    opt.step()
    print(f"STEP {step} {time.time()!r}", flush=True)
    if step == args.hang_at:
        print("READY", flush=True)
        time.sleep(3600)
    if step == args.val_at:
        with torch.no_grad():
            for vx, vy in val:
                time.sleep(args.val_s / 2)
                nn.functional.mse_loss(model(vx), vy)
print("DONE", flush=True)
