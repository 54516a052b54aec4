"""A nanoGPT-style training script of our own (not nanoGPT's code), with its idioms.

get_batch() slices random windows of a token tensor (no DataLoader); estimate_loss() runs model.eval() under
no_grad over both splits; the lr is set on the param groups at the top of each iteration (warmup, then cosine);
each micro-batch's loss is divided by gradient_accumulation_steps before scaler.scale(loss).backward() (or, with
--unscaled, not divided); a checkpoint is saved after each eval.  Prints `step N: train loss X, val loss Y` and
`iter N: loss X` as nanoGPT does, the latter with the exact mean of the step's micro-batch losses (nanoGPT
prints its last micro-batch's loss times the accumulation, an approximation its comment admits).
"""

import argparse
import math
import os

import torch
from torch import nn
from torch.nn import functional as F

p = argparse.ArgumentParser()
p.add_argument("--out_dir", required=True)
p.add_argument("--gradient_accumulation_steps", type=int, default=1)
p.add_argument("--unscaled", action="store_true")
p.add_argument("--max_iters", type=int, default=12)
p.add_argument("--eval_interval", type=int, default=4)
p.add_argument("--eval_iters", type=int, default=3)
args = p.parse_args()

torch.manual_seed(1337)
block_size, batch_size, vocab = 16, 4, 32
data = torch.randint(0, vocab, (4096,))
train_data, val_data = data[:3600], data[3600:]


def get_batch(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    d = train_data if split == "train" else val_data
    ix = torch.randint(len(d) - block_size, (batch_size,))
    x = torch.stack([d[i:i + block_size] for i in ix])
    y = torch.stack([d[i + 1:i + 1 + block_size] for i in ix])
    return x, y


class GPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, 32)
        self.wpe = nn.Embedding(block_size, 32)
        self.block = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True)
        self.lm_head = nn.Linear(32, vocab)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple:
        t = idx.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        x = self.block(self.wte(idx) + self.wpe(torch.arange(t)), src_mask=mask, is_causal=True)
        logits = self.lm_head(x)
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


model = GPT()
optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95))
scaler = torch.amp.GradScaler("cpu", enabled=False)
learning_rate, min_lr, warmup_iters, lr_decay_iters = 6e-4, 6e-5, 3, args.max_iters


def get_lr(it: int) -> float:
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


@torch.no_grad()
def estimate_loss() -> dict:
    out = {}
    model.eval()
    for split in ["train", "val"]:
        losses = torch.zeros(args.eval_iters)
        for k in range(args.eval_iters):
            X, Y = get_batch(split)
            _, loss = model(X, Y)
            losses[k] = loss.item()
        out[split] = losses.mean()
    model.train()
    return out


os.makedirs(args.out_dir, exist_ok=True)
accum = args.gradient_accumulation_steps
X, Y = get_batch("train")
iter_num = 0
while True:
    lr = get_lr(iter_num)
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr
    if iter_num % args.eval_interval == 0:
        losses = estimate_loss()
        print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        if iter_num > 0:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iter_num": iter_num},
                       os.path.join(args.out_dir, "ckpt.pt"))
    lossf = 0.0
    for _micro_step in range(accum):
        _, loss = model(X, Y)
        if not args.unscaled:
            loss = loss / accum  # scale the loss to account for gradient accumulation
        lossf += loss.item() if not args.unscaled else loss.item() / accum
        X, Y = get_batch("train")  # prefetch the next batch
        scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    print(f"iter {iter_num}: loss {lossf:.6f}, lr {lr:.6e}")
    iter_num += 1
    if iter_num > args.max_iters:
        break
