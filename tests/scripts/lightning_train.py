"""Tiny Lightning job (an MLP on synthetic data) with CSVLogger and ModelCheckpoint; metrics.csv is the truth.

--crash-at N: training_step N raises a shape error, in an attempt that finds no checkpoint in --out (the first).
--val-sets 2: two validation dataloaders (val_loss/dataloader_idx_0 and _1). train_mae comes from self.log_dict.
"""

import argparse
import os

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--accum", type=int, default=1)
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--crash-at", type=int, default=0)
p.add_argument("--val-sets", type=int, default=1)
args = p.parse_args()
ckpt_dir = os.path.join(args.out, "ckpt")
first_attempt = not (os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir))


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        self.calls = 0

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        self.calls += 1
        x, y = batch
        if args.crash_at and first_attempt and self.calls == args.crash_at:
            x = x[:, :5]  # mat1 and mat2 shapes cannot be multiplied
        out = self.net(x)
        loss = torch.nn.functional.mse_loss(out, y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        self.log_dict({"train_mae": (out - y).abs().mean()})
        return loss

    def validation_step(self, batch: tuple, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y), on_epoch=True)

    def configure_optimizers(self) -> dict:
        opt = torch.optim.SGD(self.parameters(), lr=0.05)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)}


torch.manual_seed(0)
x = torch.randn(96, 8)
y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(96, 1)
train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=8)
val = [DataLoader(TensorDataset(x[64 + k:96:args.val_sets], y[64 + k:96:args.val_sets]), batch_size=8)
       for k in range(args.val_sets)]
trainer = L.Trainer(max_epochs=args.epochs, accumulate_grad_batches=args.accum, log_every_n_steps=1,
                    logger=CSVLogger(args.out, name="csv", version=0), accelerator="cpu", devices=1,
                    callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1)],
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Net(), train, val)
