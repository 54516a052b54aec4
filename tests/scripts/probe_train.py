"""A real training loop for the probe tests; it prints what tlog must record, exactly, for comparison.

STEP step epoch batch loss lr grad_norm | VAL epoch mean-of-batch-losses | CKPT step path | SUB captured-output
"""

import argparse
import os
import subprocess
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tlog


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--samples", type=int, default=36)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--context", default=None, help="multiprocessing start method of the DataLoader workers")
    p.add_argument("--nan-at", type=int, nargs="*", default=[])
    p.add_argument("--ckpt", default="", help="directory for a checkpoint per epoch (one by path, one by file)")
    p.add_argument("--fake-cuda", action="store_true")
    p.add_argument("--log-acc", action="store_true")
    p.add_argument("--subprocess", action="store_true")
    p.add_argument("--no-grad-norm-api", action="store_true", help="remove what --grad-norm relies on")
    p.add_argument("--blip-at-epoch", type=int, default=-1,
                   help="a network error as this epoch starts, once (MARKER made); a restart resumes after "
                        "the checkpoint tlog names")
    p.add_argument("--marker", default="blip")
    args = p.parse_args()

    if args.fake_cuda:  # the boundary the probe reads CUDA memory through; these counters never synchronise
        torch.cuda.is_initialized = lambda: True
        torch.cuda.memory_allocated = lambda device=None: 3 * 2**20
        torch.cuda.memory_reserved = lambda device=None: 5 * 2**20
        torch.cuda.max_memory_allocated = lambda device=None: 4 * 2**20
    if args.no_grad_norm_api:
        del torch.nn.utils.get_total_norm

    torch.manual_seed(0)
    x = torch.randn(args.samples, 6)
    y = x @ torch.randn(6, 1) + 0.1 * torch.randn(args.samples, 1)
    train = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, num_workers=args.workers,
                       multiprocessing_context=args.context if args.workers else None)
    val = DataLoader(TensorDataset(x[:12], y[:12]), batch_size=5)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    loss_fn = nn.MSELoss()
    step, start = 0, 0
    resume = tlog.resume_checkpoint()
    if resume:  # .../opt-<epoch>.pt, the last file of that epoch's checkpoint
        start = int(resume.rsplit("-", 1)[1].split(".")[0]) + 1
        model.load_state_dict(torch.load(resume.replace("opt-", "model-")))
        opt.load_state_dict(torch.load(resume))
        step = start * len(train)
        print(f"RESUMED {step} {start}", flush=True)
    for epoch in range(start, args.epochs):
        if epoch == args.blip_at_epoch and not os.path.exists(args.marker):
            open(args.marker, "w").close()
            raise ConnectionResetError(104, "Connection reset by peer")
        model.train()
        for batch, (xb, yb) in enumerate(train):
            opt.zero_grad()
            out = model(xb)
            loss = loss_fn(out, yb)
            if step + 1 in args.nan_at:
                loss = loss + float("nan")  # a constant: the gradients (and the next steps) stay finite
            loss.backward()
            grads = [q.grad for q in model.parameters()]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
            opt.step()
            step += 1
            print(f"STEP {step} {epoch} {batch} {loss.item()!r} {opt.param_groups[0]['lr']!r} {norm!r}", flush=True)
            if args.log_acc:
                tlog.log(accuracy=1.0 / step)
            sched.step()
        model.eval()
        with torch.no_grad():
            losses = [loss_fn(model(xb), yb).item() for xb, yb in val]
        print(f"VAL {epoch} {sum(losses) / len(losses)!r}", flush=True)
        if args.ckpt:
            path = f"{args.ckpt}/model-{epoch}.pt"
            torch.save(model.state_dict(), path)
            with open(f"{args.ckpt}/opt-{epoch}.pt", "wb") as f:
                torch.save(opt.state_dict(), f)
            print(f"CKPT {step} {path}", flush=True)
    if args.subprocess:  # a child whose output its parent reads must not carry tlog's events
        out = subprocess.run([sys.executable, "-c", "import tlog, torch; tlog.log(leak=1.0); print('child-ok')"],
                             capture_output=True, text=True, check=True)
        print(f"SUB {out.stdout!r}", flush=True)


if __name__ == "__main__":  # spawn workers import this file again
    main()
