"""Tiny accelerate job (an MLP on synthetic data); it prints its own truth, which the test compares with tlog's.

`accelerator.accumulate(model)` + `accelerator.backward(loss)` (accelerate divides the loss by
gradient_accumulation_steps inside backward); 10 micro-batches an epoch, so with --accum 4 the epoch's last
step has 2 (accelerate steps at the end of the dataloader). Each optimizer step prints
`step N: loss L lr R` (L: the mean of the step's micro-batch losses, R: the lr the step used); each epoch ends
with an eval pass over 10 samples in batches of 4 (`gather_for_metrics(loss.repeat(bs))`, then the mean over
samples), printed as `eval step N: loss L`, and `accelerator.save_state()` (automatic naming:
<out>/checkpoints/checkpoint_<epoch>). --crash-at K: micro-batch K raises a shape error in an attempt that
finds no checkpoint (the first); --resume_from_checkpoint DIR: load_state(DIR) and go on from there.
Last line: which other frameworks are in sys.modules (none: tlog's adapters import nothing the script did not).
"""

import argparse
import os
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--accum", type=int, default=1)
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--crash-at", type=int, default=0)
p.add_argument("--resume_from_checkpoint", default=None)
args = p.parse_args()
first_attempt = not os.path.isdir(os.path.join(args.out, "checkpoints"))


class Progress:
    """The loop's position, saved and restored with the accelerator's state."""

    def __init__(self) -> None:
        self.epoch, self.step = 0, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step = state["epoch"], state["step"]


accelerator = Accelerator(gradient_accumulation_steps=args.accum, cpu=True,
                          project_config=ProjectConfiguration(project_dir=args.out, automatic_checkpoint_naming=True))
torch.manual_seed(0)
x = torch.randn(50, 8)
y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(50, 1)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
train = DataLoader(TensorDataset(x[:40], y[:40]), batch_size=4)
held_out = DataLoader(TensorDataset(x[40:], y[40:]), batch_size=4)
progress = Progress()
accelerator.register_for_checkpointing(progress)
model, optimizer, train, held_out, scheduler = accelerator.prepare(model, optimizer, train, held_out, scheduler)
if args.resume_from_checkpoint:
    accelerator.load_state(args.resume_from_checkpoint)
    accelerator.project_configuration.iteration = progress.epoch  # the next checkpoint_N
micro_losses: list[float] = []
calls = 0
for epoch in range(progress.epoch, args.epochs):
    model.train()
    for xb, yb in train:
        calls += 1
        if args.crash_at and first_attempt and calls == args.crash_at:
            xb = xb[:, :5]  # mat1 and mat2 shapes cannot be multiplied
        with accelerator.accumulate(model):
            loss = F.mse_loss(model(xb), yb)
            micro_losses.append(loss.item())
            accelerator.backward(loss)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        if accelerator.sync_gradients:
            progress.step += 1
            print(f"step {progress.step}: loss {sum(micro_losses) / len(micro_losses)!r} lr {lr!r}")
            micro_losses = []
    model.eval()
    losses = []
    for xb, yb in held_out:
        with torch.no_grad():
            loss = F.mse_loss(model(xb), yb)
        losses.append(accelerator.gather_for_metrics(loss.repeat(len(xb))))
    print(f"eval step {progress.step}: loss {torch.cat(losses).mean().item()!r}")
    progress.epoch = epoch + 1
    accelerator.save_state()
others = ("transformers", "lightning", "pytorch_lightning")
print("other frameworks loaded:", sorted(m for m in others if m in sys.modules))
