"""Per-step truth for tlog's default record: each step prints its own loss (and time) after the step.

    per_step.py plain [--steps N] [--spike STEP] [--crash-at STEP] [--kill-at STEP] [--sleep S]
    per_step.py accum [--steps N]     # two backwards per optimizer step: the step's loss is their mean
    per_step.py gan [--steps N]       # two optimizers: each step prints both losses

Lines: ``STEP <step> <loss> <time>`` (gan: ``STEP <step> <loss_d> <loss_g> <time>``); a per-step cosine
schedule changes the learning rate every step (``LR <step> <lr>``).
"""

import argparse
import os
import signal
import time

import torch
from torch import nn

p = argparse.ArgumentParser()
p.add_argument("mode", choices=["plain", "accum", "gan"])
p.add_argument("--steps", type=int, default=60)
p.add_argument("--spike", type=int, default=-1)
p.add_argument("--crash-at", type=int, default=-1)
p.add_argument("--kill-at", type=int, default=-1)
p.add_argument("--sleep", type=float, default=0.0)
args = p.parse_args()

torch.manual_seed(0)
x, y = torch.randn(32, 4), torch.randn(32, 1)
model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.05)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
other = nn.Linear(4, 1)
opt2 = torch.optim.SGD(other.parameters(), lr=0.01) if args.mode == "gan" else None

for step in range(1, args.steps + 1):
    print(f"LR {step} {opt.param_groups[0]['lr']!r}", flush=True)
    opt.zero_grad()
    if args.mode == "accum":
        parts = []
        for half in (x[:16], x[16:]):
            part = ((model(half) - y[:16]) ** 2).mean()
            part.backward()
            parts.append(part.item())
        loss = sum(parts) / 2
    else:
        scale = 50.0 if step == args.spike else 1.0
        out = ((model(x) - y) ** 2).mean() * scale
        out.backward()
        loss = out.item()
    opt.step()
    sched.step()
    if opt2 is not None:
        opt2.zero_grad()
        out2 = ((other(x) + y) ** 2).mean()
        out2.backward()
        opt2.step()
        print(f"STEP {step} {loss!r} {out2.item()!r} {time.time()!r}", flush=True)
    else:
        print(f"STEP {step} {loss!r} {time.time()!r}", flush=True)
    if args.sleep:
        time.sleep(args.sleep)
    if step == args.crash_at:
        raise RuntimeError(f"planted failure at step {step}")
    if step == args.kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
