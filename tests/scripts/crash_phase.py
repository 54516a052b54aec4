"""A small real training loop that fails in the phase named by its first argument (one script, many crashes).

    worker     a DataLoader worker (num_workers=1) raises while loading batch 2
    workersegv a DataLoader worker dies of SIGSEGV (NULL read through ctypes) while loading batch 2
    shape      the model gets inputs of the wrong width at step 3 (forward)
    target     cross_entropy gets a class index out of range at step 3 (loss)
    backward   backward() twice through the same graph at step 3
    optimizer  the learning rate arrives as a string, as YAML 1.1 loads "1e-3" (optimizer construction)
    ckpt       resumes from a truncated checkpoint file
    args       an unknown command-line option (argparse exits 2)
    sigkill    the process is SIGKILLed at step 3
    savekill   saves a checkpoint at step 3 (the save returns), then is SIGKILLed
    segv       a native crash (SIGSEGV, NULL read through ctypes) at step 3
    hang       sleeps forever after step 3, printing READY
    stall      a DataLoader worker blocks forever on batch 2

--steps N (default 6): one epoch of N batches (batch = step - 1); --at S (default 3): the step after which
sigkill, savekill, segv and hang strike.  --handler: a SIGTERM/SIGHUP handler of the script's own, installed
after torch, prints HANDLED <signal> and dies of the signal (the usual re-raise).
"""

import argparse
import ctypes
import os
import signal
import sys
import time

MODES = ("worker", "workersegv", "shape", "target", "backward", "optimizer", "ckpt", "args", "sigkill", "savekill",
         "segv", "hang", "stall")
p = argparse.ArgumentParser()
p.add_argument("mode", choices=MODES)
p.add_argument("--steps", type=int, default=6)
p.add_argument("--at", type=int, default=3)
p.add_argument("--handler", action="store_true")
args = p.parse_args(sys.argv[1:] + (["--no-such-option"] if sys.argv[1:2] == ["args"] else []))

import torch  # noqa: E402 - after argument parsing, as training scripts do
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402


class Numbers(Dataset):
    """8 features, 4 classes; item 8 (batch 2) can fail or block inside a worker."""

    def __len__(self) -> int:
        return 4 * args.steps

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i == 8 and args.mode == "worker":
            raise KeyError(f"sample {i} missing from the shard index")
        if i == 8 and args.mode == "workersegv":
            ctypes.string_at(0)
        if i == 8 and args.mode == "stall":
            time.sleep(3600)
        g = torch.Generator().manual_seed(i)
        return torch.randn(8, generator=g), torch.tensor(i % 4)




def handled(signum: int, _frame: object) -> None:
    print(f"HANDLED {signal.Signals(signum).name}", flush=True)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


if args.handler:
    signal.signal(signal.SIGTERM, handled)
    signal.signal(signal.SIGHUP, handled)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
lr = "1e-3" if args.mode == "optimizer" else 0.1
opt = torch.optim.SGD(model.parameters(), lr=lr)
if args.mode == "ckpt":
    torch.save({"model": model.state_dict(), "step": 3}, "ck.pt")
    data = open("ck.pt", "rb").read()
    open("ck.pt", "wb").write(data[: len(data) // 2])
    model.load_state_dict(torch.load("ck.pt")["model"])
workers = 1 if args.mode in ("worker", "workersegv", "stall") else 0
loader = DataLoader(Numbers(), batch_size=4, num_workers=workers)
for step, (x, y) in enumerate(loader, start=1):
    opt.zero_grad()
    if step == 3 and args.mode == "shape":
        x = x[:, :6]
    out = model(x)
    if step == 3 and args.mode == "target":
        y = y + 10
    loss = F.cross_entropy(out, y)
    loss.backward()
    if step == 3 and args.mode == "backward":
        loss.backward()
    opt.step()
    print(f"STEP {step} {loss.item()!r}", flush=True)
    if step == args.at and args.mode == "savekill":
        torch.save(model.state_dict(), "ck.pt")
    if step == args.at and args.mode in ("sigkill", "savekill"):
        os.kill(os.getpid(), signal.SIGKILL)
    if step == args.at and args.mode == "segv":
        ctypes.string_at(0)
    if step == args.at and args.mode == "hang":
        print("READY", flush=True)
        time.sleep(3600)
print("DONE", flush=True)
