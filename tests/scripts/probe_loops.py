"""Training loops that are not the textbook one; each prints ``STEP step loss`` for what tlog must record.

--loop accum   4 micro-batches per optimizer step (the step's loss: the mean of the 4 backwards)
--loop lbfgs   LBFGS, whose step calls the closure (and backward) several times (the step's loss: the first)
--loop manual  no optimizer at all: parameters updated by hand (a step: one backward)
--loop gan     two optimizers, D then G each iteration (step: D's steps; G's loss as loss/opt2)
--loop amp     GradScaler on the CPU: backward runs on loss * scale (the loss recorded: the unscaled one)
--loop graphs  reentrant activation checkpointing (a backward inside the backward, not a loss), with the
               graph retained, and torch.autograd.backward called directly, in turn
"""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

p = argparse.ArgumentParser()
p.add_argument("--loop", required=True)
p.add_argument("--steps", type=int, default=6)
args = p.parse_args()

torch.manual_seed(0)
x = torch.randn(128, 4)
y = x.sum(1, keepdim=True)
loader = DataLoader(TensorDataset(x, y), batch_size=4)
model = nn.Linear(4, 1)
loss_fn = nn.MSELoss()


def accum() -> None:
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    batches = iter(loader)
    for step in range(1, args.steps + 1):
        micro = []
        for _ in range(4):
            xb, yb = next(batches)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            micro.append(loss.item())
        opt.step()
        opt.zero_grad()
        print(f"STEP {step} {sum(micro) / len(micro)!r}", flush=True)


def lbfgs() -> None:
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    for step in range(1, args.steps + 1):
        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss

        first = opt.step(closure)  # LBFGS returns the loss of its first evaluation
        print(f"STEP {step} {first.item()!r}", flush=True)


def manual() -> None:
    for step, (xb, yb) in enumerate(loader, 1):
        loss = loss_fn(model(xb), yb)
        loss.backward()
        with torch.no_grad():
            for q in model.parameters():
                q.add_(q.grad, alpha=-0.05)
                q.grad = None
        print(f"STEP {step} {loss.item()!r}", flush=True)
        if step == args.steps:
            break


def gan() -> None:
    gen, disc = nn.Linear(2, 4), nn.Sequential(nn.Linear(4, 1), nn.Sigmoid())
    opt_d = torch.optim.Adam(disc.parameters(), lr=0.01)
    opt_g = torch.optim.SGD(gen.parameters(), lr=0.02)
    bce = nn.BCELoss()
    for step in range(1, args.steps + 1):
        real, fake = x[:8], gen(torch.randn(8, 2))
        d_loss = bce(disc(real), torch.ones(8, 1)) + bce(disc(fake.detach()), torch.zeros(8, 1))
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_loss = bce(disc(fake), torch.ones(8, 1))
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        print(f"STEP {step} {d_loss.item()!r} {g_loss.item()!r}", flush=True)


def amp() -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for step, (xb, yb) in enumerate(loader, 1):
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        print(f"STEP {step} {loss.item()!r}", flush=True)
        if step == args.steps:
            break


def graphs() -> None:
    from torch.utils.checkpoint import checkpoint

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step, (xb, yb) in enumerate(loader, 1):
        opt.zero_grad()
        # the loss itself recomputed in the backward: the inner backward runs on a scalar too
        loss = checkpoint(lambda a, b: loss_fn(model(a), b), xb.requires_grad_(), yb, use_reentrant=True)
        if step % 3 == 1:
            loss.backward(retain_graph=True)
        elif step % 3 == 2:
            torch.autograd.backward(loss)
        else:
            torch.autograd.backward([loss])
        opt.step()
        print(f"STEP {step} {loss.item()!r}", flush=True)
        if step == args.steps:
            break


{"accum": accum, "lbfgs": lbfgs, "manual": manual, "gan": gan, "amp": amp, "graphs": graphs}[args.loop]()
