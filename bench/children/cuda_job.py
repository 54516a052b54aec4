"""Child of gpu_check.py: a small training job on ``cuda`` (or ``cpu`` for the self-test); writes its own readings
as JSON to $BENCH_OUT.

``cuda_job.py MODE DEVICE [LAYERS] [STEPS]``:
  train   an MLP (LAYERS Linear(1024, 1024) layers, or $GPU_CHECK_WIDTH wide; Adam) for STEPS steps, every
          step's loss kept on the device and copied once at the end; then, synchronised, its own memory
          readings (memory_reserved, memory_allocated and what NVML says of this pid), held for
          $GPU_CHECK_HOLD s so the supervisor samples the steady state.  With
          GPU_CHECK_SYNCS=1, ``torch.cuda.set_sync_debug_mode("warn")`` is on and the synchronising calls warned
          about are counted inside each step and outside the steps.
  oom     a few steps, then one allocation larger than the card inside step 5.
  assert  a few steps, then an embedding index out of range inside step 5 (a device-side assert on cuda).
  ddp     DistributedDataParallel (nccl on cuda, gloo on cpu) for STEPS steps, under torchrun.
"""

import json
import os
import sys
import time
import warnings

import torch
from torch import nn

mode, device = sys.argv[1], sys.argv[2]
layers = int(sys.argv[3]) if len(sys.argv) > 3 else 2
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 300
width = int(os.environ.get("GPU_CHECK_WIDTH", "1024"))  # the cpu self-test makes it small
cuda = device.startswith("cuda")
count_syncs = cuda and os.environ.get("GPU_CHECK_SYNCS") == "1"
torch.manual_seed(0)
report: dict = {"mode": mode, "device": device, "pid": os.getpid()}


def nvml_own_mb() -> float | None:
    """This process's GPU memory as NVML lists it (None when NVML cannot see this pid, e.g. in a container)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                return proc.usedGpuMemory / 2**20
    except Exception:  # noqa: BLE001 - no NVML, or not this pid: the figure says so
        return None
    return None


def build() -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor]:
    body = [m for _ in range(layers) for m in (nn.Linear(width, width), nn.ReLU())]
    model = nn.Sequential(*body, nn.Linear(width, 1)).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=1e-4), torch.randn(256, width, device=device)


def write() -> None:
    with open(os.environ["BENCH_OUT"], "w") as f:
        json.dump(report, f)


if mode == "ddp":
    import torch.distributed as dist

    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    if cuda:
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    model, _, x = build()
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[rank] if cuda else None)
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        loss = ddp(x).square().mean()
        loss.backward()
        opt.step()
    report.update(rank=rank, world_size=dist.get_world_size(), final_loss=float(loss))
    dist.destroy_process_group()
    write()
    sys.exit(0)

if cuda:
    torch.cuda.init()
    torch.empty(1, device=device)
    torch.cuda.synchronize()
    own = nvml_own_mb()  # the CUDA context alone: nothing is reserved yet beyond one tiny block
    report["context_mb"] = own - torch.cuda.memory_reserved() / 2**20 if own is not None else None
model, opt, x = build()
embedding = nn.Embedding(10, 8).to(device)

if mode in ("oom", "assert"):
    for step in range(1, 11):
        opt.zero_grad()
        loss = model(x).square().mean()
        if step == 5 and mode == "oom":
            free, total = torch.cuda.mem_get_info() if cuda else (0, 0)
            report["asked_bytes"] = 2 * total
            write()
            torch.empty(2 * total // 4, dtype=torch.float32, device=device)
        if step == 5 and mode == "assert":
            write()
            loss = loss + embedding(torch.tensor([20], device=device)).sum()
        loss.backward()
        opt.step()
        float(loss)  # the step's own sync, so the assert surfaces inside the step
    sys.exit(0)

caught: list = []
if count_syncs:
    warnings.simplefilter("always")
    warnings.showwarning = lambda message, *a, **k: caught.append(str(message))
    torch.cuda.set_sync_debug_mode("warn")
per_step = []
losses = []
if cuda:
    torch.cuda.synchronize()
t0 = time.perf_counter()
for _ in range(steps):
    before = len(caught)
    opt.zero_grad()
    loss = model(x).square().mean()
    loss.backward()
    opt.step()
    losses.append(loss.detach())
    per_step.append(len(caught) - before)
if cuda:
    torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
report["step_ms"] = (time.perf_counter() - t0) / steps * 1e3
inside = sum(per_step)
report["losses"] = len(torch.stack(losses).cpu().tolist())
report.update(syncs_in_steps=inside, syncs_total=len(caught), steps_with_syncs=sum(1 for n in per_step if n),
              sync_samples=sorted(set(caught))[:5], steps=steps, counted_syncs=count_syncs)
if cuda:
    report.update(reserved_mb=torch.cuda.memory_reserved() / 2**20,
                  allocated_mb=torch.cuda.memory_allocated() / 2**20,
                  max_reserved_mb=torch.cuda.max_memory_reserved() / 2**20, nvml_own_mb=nvml_own_mb())
write()
if os.environ.get("GPU_CHECK_HOLD"):
    time.sleep(float(os.environ["GPU_CHECK_HOLD"]))  # steady memory, so the supervisor's samples see it
