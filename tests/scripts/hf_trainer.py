"""Tiny HF Trainer job (GPT-2 from a config, synthetic tokens, nothing downloaded); writes log_history to JSON."""

import argparse
import json
import os

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--accum", type=int, default=1)
p.add_argument("--steps", type=int, default=8)
args = p.parse_args()

torch.manual_seed(0)
cfg = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)
model = GPT2LMHeadModel(cfg)
data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (64, 16))]
targs = TrainingArguments(output_dir=os.path.join(args.out, "hf"), per_device_train_batch_size=4,
                          gradient_accumulation_steps=args.accum, max_steps=args.steps, logging_steps=1,
                          learning_rate=1e-3, save_strategy="no", report_to=[], use_cpu=True,
                          disable_tqdm=True, dataloader_num_workers=0)
trainer = Trainer(model=model, args=targs, train_dataset=data)
trainer.train()
with open(os.path.join(args.out, "log_history.json"), "w") as f:
    json.dump(trainer.state.log_history, f)
