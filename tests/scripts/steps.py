"""A tiny real training loop that prints each step's loss exactly, for comparison with tlog's record.

Options: --epochs N, --crash-at STEP (raise mid-epoch), --sleep S (per step), --log-acc (tlog.log accuracy),
--hold (sleep forever after N steps, printing READY), --no-save, --val (tlog.log validation_loss each epoch).
"""

import argparse
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--samples", type=int, default=64)
p.add_argument("--batch-size", type=int, default=16)
p.add_argument("--crash-at", type=int, default=-1)
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--log-acc", action="store_true")
p.add_argument("--hold-at", type=int, default=-1)
p.add_argument("--save", default="")
p.add_argument("--val", action="store_true")
args = p.parse_args()

torch.manual_seed(0)
x = torch.randn(args.samples, 8)
y = (x.sum(1, keepdim=True) > 0).float()
loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
loss_fn = nn.BCEWithLogitsLoss()
step = 0
for epoch in range(args.epochs):
    for xb, yb in loader:
        opt.zero_grad()
        out = model(xb)
        loss = loss_fn(out, yb)
        loss.backward()
        opt.step()
        step += 1
        print(f"STEP {step} {epoch} {loss.item()!r}", flush=True)
        if args.log_acc:
            import tlog

            tlog.log(accuracy=((out > 0).float() == yb).float().mean().item())
        if step == args.crash_at:
            raise RuntimeError(f"planted failure at step {step}")
        if step == args.hold_at:
            print("READY", flush=True)
            time.sleep(3600)
        if args.sleep:
            time.sleep(args.sleep)
    if args.val:
        import tlog

        tlog.log(validation_loss=loss.item() * 1.5)
    if args.save:
        torch.save(model.state_dict(), args.save.format(epoch=epoch))
print("DONE", file=sys.stderr)
