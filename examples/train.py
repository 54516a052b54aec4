"""A small but real PyTorch training script: nothing in it knows about tlog.

An MLP learns a noisy nonlinear function of synthetic data, with a DataLoader,
Adam and a step LR schedule, a validation pass and a checkpoint each epoch.
Run it with ``tlog run examples/train.py`` (or plain ``python``).
"""

import argparse
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :4].sin().sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g))
    return TensorDataset(x, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--checkpoint-dir", default="checkpoints")
    args = parser.parse_args()

    torch.manual_seed(0)
    train = DataLoader(make_data(args.samples, 1), batch_size=args.batch_size, shuffle=True)
    val = DataLoader(make_data(args.samples // 4, 2), batch_size=256)
    model = nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    loss_fn = nn.MSELoss()
    os.makedirs(args.checkpoint_dir, exist_ok=True)

    for epoch in range(args.epochs):
        model.train()
        total = 0.0
        for x, y in train:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item()
        scheduler.step()
        model.eval()
        with torch.no_grad():
            val_loss = sum(loss_fn(model(x), y).item() * len(x) for x, y in val) / len(val.dataset)
        print(f"epoch {epoch}: train loss {total / len(train):.4f}  val loss {val_loss:.4f}")
        torch.save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict()},
                   os.path.join(args.checkpoint_dir, f"epoch{epoch}.pt"))


if __name__ == "__main__":
    main()
