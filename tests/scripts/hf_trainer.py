"""Tiny HF Trainer job (GPT-2 from a config, synthetic tokens, nothing downloaded); writes log_history to JSON.

--crash-at N: the data collator raises on the Nth batch it collates, in an attempt that finds no checkpoint in
--out (the first), so a restart resumes from the checkpoint and finishes. --eval-sets: two eval datasets, a dict
(eval_a_loss, eval_b_loss). --subclass: a Trainer subclass computing the loss in its own compute_loss.
"""

import argparse
import json
import os

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments, default_data_collator

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--accum", type=int, default=1)
p.add_argument("--steps", type=int, default=8)
p.add_argument("--eval-steps", type=int, default=0)
p.add_argument("--save-steps", type=int, default=0)
p.add_argument("--crash-at", type=int, default=0)
p.add_argument("--eval-sets", action="store_true")
p.add_argument("--subclass", action="store_true")
args = p.parse_args()

torch.manual_seed(0)
cfg = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)
model = GPT2LMHeadModel(cfg)
data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (64, 16))]
held_out = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (12, 16))]
hf_dir = os.path.join(args.out, "hf")
first_attempt = not (os.path.isdir(hf_dir) and any(n.startswith("checkpoint-") for n in os.listdir(hf_dir)))
collated = 0


def collate(features: list) -> dict:
    global collated
    collated += 1
    if args.crash_at and first_attempt and collated == args.crash_at:
        raise ValueError(f"bad sample in batch {collated}")
    return default_data_collator(features)


class OwnLoss(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        logits = outputs.logits[:, :-1].reshape(-1, outputs.logits.size(-1))
        loss = torch.nn.functional.cross_entropy(logits, inputs["labels"][:, 1:].reshape(-1))
        return (loss, outputs) if return_outputs else loss


targs = TrainingArguments(
    output_dir=hf_dir, per_device_train_batch_size=4, per_device_eval_batch_size=4,
    gradient_accumulation_steps=args.accum, max_steps=args.steps, logging_steps=1, learning_rate=1e-3,
    eval_strategy="steps" if args.eval_steps else "no", eval_steps=args.eval_steps or None,
    save_strategy="steps" if args.save_steps else "no", save_steps=args.save_steps or 500,
    report_to=[], use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
evals = {"a": held_out[:8], "b": held_out[8:]} if args.eval_sets else held_out
trainer = (OwnLoss if args.subclass else Trainer)(model=model, args=targs, train_dataset=data,
                                                   eval_dataset=evals if args.eval_steps else None,
                                                   data_collator=collate)
trainer.train()
with open(os.path.join(args.out, "log_history.json"), "w") as f:
    json.dump(trainer.state.log_history, f)
