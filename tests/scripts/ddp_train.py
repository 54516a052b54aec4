"""A real DistributedDataParallel loop for torchrun (gloo, CPU) that prints each rank's loss exactly.

--steps N                 optimizer steps (default 6); each rank sees its DistributedSampler shard
--crash-rank R            rank R feeds a malformed batch (a shape error in its forward pass) ...
--crash-step S            ... at step S
--hang-rank R --hang-step S   rank R sleeps for an hour after step S (the others wait in DDP's all-reduce)
--fail-when W             when the crash or hang happens: always; fresh: only on a run that did not resume
                          (tlog.resume_checkpoint() is None); first-round: only before torchrun's first restart
--save-every K            rank 0 saves {"model", "opt", "step"} every K steps into --ckpt-dir
--exit-after-restart      a round started by torchrun's own restart exits at once (torch 2.13's gloo often fails
                          to rebuild its mesh within one agent, which would make a test of the restart flaky)
--peer-aborts             a rank whose peer failed dies of SIGABRT instead of raising (faulthandler's unprefixed
                          "Fatal Python error: Aborted" on the shared stderr), as torch 2.13's gloo does at random
                          when the group dies in finalization
Prints "LOSS <rank> <step> <loss!r>" per step and, when resuming, "RESUMED <rank> <step> <checkpoint>".

The end frees the DDP model (which holds the process group) before destroying the group: with torch 2.13's
gloo, a group left to die in interpreter finalization aborts the worker ("terminate called without an
active exception", SIGABRT) in about 1 of 5 two-node runs of plain torchrun, no tlog involved (5/25 on this
machine; 0/25 with this ending), and the peer node then waits out torchrun's 300 s exit barrier.
"""

import argparse
import gc
import itertools
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import tlog


def say(line: str) -> None:
    """One write per line: ranks share the pipe, and print() writes text and newline separately."""
    os.write(1, (line + "\n").encode())


p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=6)
p.add_argument("--crash-rank", type=int, default=-1)
p.add_argument("--crash-step", type=int, default=-1)
p.add_argument("--fail-when", choices=("always", "fresh", "first-round"), default="always")
p.add_argument("--save-every", type=int, default=0)
p.add_argument("--ckpt-dir", default="ckpts")
p.add_argument("--hang-rank", type=int, default=-1)
p.add_argument("--hang-step", type=int, default=-1)
p.add_argument("--exit-after-restart", action="store_true")
p.add_argument("--peer-aborts", action="store_true")
args = p.parse_args()
if args.exit_after_restart and os.environ["TORCHELASTIC_RESTART_COUNT"] != "0":
    say(f"RESTARTED {os.environ['RANK']}")
    sys.exit(0)

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
x = torch.randn(64, 8)
y = (x.sum(1, keepdim=True) > 0).float()
data = TensorDataset(x, y)
sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
loader = DataLoader(data, batch_size=8, sampler=sampler)
model = DistributedDataParallel(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
loss_fn = nn.BCEWithLogitsLoss()

step = 0
resume = tlog.resume_checkpoint()
if resume:
    state = torch.load(resume)
    model.module.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    step = state["step"]
    say(f"RESUMED {rank} {step} {resume}")
when = {"always": True, "fresh": resume is None, "first-round": os.environ["TORCHELASTIC_RESTART_COUNT"] == "0"}
crash = rank == args.crash_rank and when[args.fail_when]
if args.peer_aborts and rank != args.crash_rank:
    sys.excepthook = lambda *exc: os.abort()
hang = rank == args.hang_rank and when[args.fail_when]
for epoch in itertools.count():
    if step >= args.steps:
        break
    sampler.set_epoch(epoch)
    for xb, yb in loader:
        if step >= args.steps:
            break
        if crash and step + 1 == args.crash_step:
            xb = xb[:, :5]  # a malformed batch on this rank only
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        step += 1
        say(f"LOSS {rank} {step} {loss.item()!r}")
        if hang and step == args.hang_step:
            time.sleep(3600)
        if rank == 0 and args.save_every and step % args.save_every == 0:
            os.makedirs(args.ckpt_dir, exist_ok=True)
            torch.save({"model": model.module.state_dict(), "opt": opt.state_dict(), "step": step},
                       os.path.join(args.ckpt_dir, f"step{step}.pt"))
dist.barrier()
del model, opt, loader, sampler
gc.collect()
dist.destroy_process_group()
