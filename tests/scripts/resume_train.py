"""A real training loop that checkpoints every --every steps and can resume; a flaky data source fails once.

--resume PATH     restore model, optimizer and step from a checkpoint (what tlog's --resume-arg passes)
--flaky MARKER    the shard fetch before step --fail-at raises ConnectionResetError, unless MARKER exists
                  (it is created first, so only the first attempt fails: a network blip, not a bug)
Prints "STEP <global step> <loss>" per step and "RESUMED <step> <tlog.resume_checkpoint()>" when resuming.
"""

import argparse
import os

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

import tlog

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=8)
p.add_argument("--every", type=int, default=4)
p.add_argument("--fail-at", type=int, default=6)
p.add_argument("--flaky", default="")
p.add_argument("--resume", default="")
p.add_argument("--ckpt-dir", default="ckpts")
args = p.parse_args()


class Remote(Dataset):
    """Samples of a 'remote' dataset, deterministic per index."""

    def __len__(self) -> int:
        return 4 * args.steps

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return torch.randn(8, generator=g), torch.tensor(i % 4)


def fetch_shard(step: int) -> None:
    """Streaming datasets fetch their next shard between steps; this fetch fails once."""
    if step == args.fail_at and args.flaky and not os.path.exists(args.flaky):
        open(args.flaky, "w").close()
        raise ConnectionResetError(104, "Connection reset by peer while fetching shard 3")


torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
done = 0
if args.resume:
    state = torch.load(args.resume)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    done = state["step"]
    print(f"RESUMED {done} {tlog.resume_checkpoint()}", flush=True)
os.makedirs(args.ckpt_dir, exist_ok=True)
data = Remote()
# Resume mid-run: skip the samples already trained on (a sampler over the remaining indices).
loader = DataLoader(data, batch_size=4, sampler=list(range(4 * done, len(data))))
for step, (x, y) in enumerate(loader, start=done + 1):
    fetch_shard(step)
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    print(f"STEP {step} {loss.item()!r}", flush=True)
    if step % args.every == 0:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step},
                   os.path.join(args.ckpt_dir, f"step{step}.pt"))
print("DONE", flush=True)
