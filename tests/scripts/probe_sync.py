"""Counts the reads of tensor values tlog makes, and at which step, in a loop whose tensors claim to live on
an accelerator (a Tensor subclass whose ``is_cpu`` is False): on a real GPU each such read is a device sync.
Reads from anywhere but tlog's code (this script's own ``loss.item()``) are not counted.

Prints ``READ step what`` for every read made from tlog's code, ``STEP step loss`` per step, and logs a
"device" tensor with ``tlog.log`` each step (which tlog must hold back, not read, until its next report).
"""

import sys

import torch
from torch import nn

import tlog

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 12
current = [0]


class OnDevice(torch.Tensor):
    """Reports itself as not on the CPU; every value read out of it is counted when tlog makes it."""

    @property
    def is_cpu(self) -> bool:
        return False


def counted(name: str):
    """Count ``name`` on every tensor (a detached OnDevice may come back as a plain Tensor)."""
    original = getattr(torch.Tensor, name)

    def read(self, *args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("tlog"):
            print(f"READ {current[0]} {name}", flush=True)
        return original(self, *args, **kwargs)

    setattr(torch.Tensor, name, read)


for method in ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy", "to"):
    counted(method)

torch.manual_seed(0)
model = nn.Linear(3, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.05)
x = torch.randn(16, 3).as_subclass(OnDevice)
y = torch.randn(16, 1).as_subclass(OnDevice)
for step in range(1, STEPS + 1):
    current[0] = step
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    assert type(loss) is OnDevice and not loss.is_cpu
    loss.backward()
    opt.step()
    tlog.log(device_metric=loss.detach() * 2)
    print(f"STEP {step} {loss.item()!r}", flush=True)
