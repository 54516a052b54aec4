"""What a practitioner would try first, concrete to the evidence: one line with each diagnosis.

A rule names a remedy in ``Rule.remedy``; the few whose best advice depends on numbers in the message (a CUDA
OOM's sizes, a shape error's shapes and module) are computed here.  Standard library only, like the classifier.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from tlog.diagnosis import rules as R
from tlog.diagnosis.parse import Exc

_UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = r"([\d.]+ ?[KMGT]?i?B)"
_OOM = {  # both spellings of the caching allocator's message (before and after torch 2.1)
    "want": (r"(?i)tried to allocate " + _SIZE,),
    "free": (_SIZE + r" free\b", r"of which " + _SIZE + r" is free"),
    "allocated": (_SIZE + r" already allocated", _SIZE + r" is allocated by PyTorch"),
    "reserved": (_SIZE + r" reserved in total by PyTorch",),
    "unallocated": (_SIZE + r" is reserved by PyTorch but unallocated",),
}
_PEAK = re.compile(r"gpu(\d+)_peak_mb")
_MODULES = {"linear": "nn.Linear", "conv": "nn.Conv", "rnn": "nn.RNN/LSTM/GRU", "normalization": "nn.LayerNorm",
            "batchnorm": "nn.BatchNorm", "activation": "nn.MultiheadAttention", "sparse": "nn.Embedding",
            "transformer": "nn.Transformer", "pooling": "a pooling layer", "flatten": "nn.Flatten"}

CATEGORY_REMEDY = {
    R.MEMORY: "reduce memory per step (batch size, sequence length, num_workers) or raise the limit",
    R.DEVICE: "check the GPU and driver (nvidia-smi); rerun with CUDA_LAUNCH_BLOCKING=1 to see the failing op",
    R.NETWORK: "check the interconnect and the peers (NCCL_DEBUG=INFO); a restart usually gets past it",
    R.SYSTEM: "check the node (disk, limits, scheduler messages) before restarting",
    R.DATA: "load the failing sample with num_workers=0 to see the data error directly",
    R.MODEL: "print the shapes and dtypes reaching the failing layer",
    R.LOSS: "check the loss inputs: target range and dtype, input shape, NaN/inf",
    R.GRAD: "check what the graph holds between forward and backward (in-place ops, detach, reuse)",
    R.OPTIM: "check the optimizer/scheduler setup: parameters, lr values, step order",
    R.CKPT: "check the checkpoint file and that it matches the model (keys, shapes, device)",
    R.VALID: "run the evaluation loop alone on a few batches",
    R.CONFIG: "fix the setting named in the message; the same settings fail the same way",
}


def _bytes(text: str) -> float | None:
    m = re.fullmatch(r"([\d.]+) ?([KMGT]?i?B)", text.strip(), re.IGNORECASE)
    return float(m[1]) * _UNITS[m[2].upper()] if m else None


def _find(text: str, patterns: tuple[str, ...]) -> tuple[str, float] | None:
    for pattern in patterns:
        if (m := re.search(pattern, text)) and (n := _bytes(m[1])) is not None:
            return m[1], n
    return None


def _gpu_peak(samples: Sequence[Mapping], text: str) -> str:
    """The monitor's peak on the device the message names (else the busiest one), from its last GPU reading:
    how full the card got, whoever filled it, beside what the allocator asked for."""
    last = next((s for s in reversed(samples) if any(_PEAK.fullmatch(k) for k in s)), None)
    if last is None:
        return ""
    peaks = {int(m[1]): v for k, v in last.items() if (m := _PEAK.fullmatch(k)) and isinstance(v, (int, float))}
    if not peaks:
        return ""
    named = re.search(r"\bGPU (\d+)", text)
    i = int(named[1]) if named and int(named[1]) in peaks else max(peaks, key=lambda k: peaks[k])
    total = last.get(f"gpu{i}_total_mb")
    of = f" of {total / 1024:.2f} GiB" if isinstance(total, (int, float)) and total else ""
    return f"monitor's peak on GPU {i} {peaks[i] / 1024:.2f} GiB{of}"


def _cuda_oom(text: str, peak: str = "") -> str:
    """The fix follows the numbers: fragmentation (reserved ≫ allocated) wants expandable segments, otherwise
    the step needs less memory."""
    got = {key: _find(text, patterns) for key, patterns in _OOM.items()}
    want, free, allocated = got["want"], got["free"], got["allocated"]
    unallocated = got["unallocated"]
    if unallocated is None and got["reserved"] and allocated:
        spare = got["reserved"][1] - allocated[1]
        unallocated = (f"{spare / 2**30:.2f} GiB", spare) if spare > 0 else None
    facts = [f"needs {want[0]}" if want else "", f"{free[0]} free" if free else "",
             f"{allocated[0]} allocated" if allocated else "",
             f"{unallocated[0]} reserved but unallocated" if unallocated else "", peak]
    said = ", ".join(f for f in facts if f)
    fragmented = unallocated and ((want and unallocated[1] >= want[1]) or
                                  (allocated and unallocated[1] > 0.25 * allocated[1]))
    advice = ("memory is fragmented: set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, then lower the batch "
              "size if it still fails" if fragmented else
              "lower the batch size, enable activation checkpointing or mixed precision; "
              "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True if reserved grows far beyond allocated")
    return f"{advice} ({said})" if said else advice


def _module(exc: Exc | None) -> str:
    """The layer that raised: the deepest torch.nn layer or user frame, whichever is deeper (a user's forward
    adding two tensors is its own module; ``module.py``'s call machinery is nobody's)."""
    for frame in reversed(exc.frames if exc else []):
        if not frame.library:
            return frame.short()
        if (m := re.search(r"torch/nn/modules/(\w+)\.py", frame.file)) and m[1] != "module":
            return _MODULES.get(m[1], f"torch.nn ({m[1]}.py)")
    return ""


_SHAPES = re.compile(r"torch\.Size\(\[[-\d, ]*\]\)|\[-?\d[-\d, ]*\]|\(\d+(?:x\d+)+\)|size \d+")
_PAIR = re.compile(r"size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\) at non-singleton "
                   r"dimension (\d+)")


def _shape(text: str, exc: Exc | None) -> str:
    """Names the two shapes (or sizes) the message compares and the module that raised."""
    module = _module(exc)
    at = f" at {module}" if module else ""
    if m := re.search(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)", text):
        return (f"the input has {m[2]} features but{' ' + module if module else ' the layer'} expects {m[3]} "
                f"({m[1]}x{m[2]} @ {m[3]}x{m[4]}): set in_features={m[2]} or reshape the input before it")
    if m := _PAIR.search(text):
        return (f"make the shapes agree{at}: tensor a has {m[1]} and tensor b has {m[2]} at dimension {m[3]}; "
                "print both shapes before the operation")
    seen = ", ".join(dict.fromkeys(_SHAPES.findall(text)[:4]))
    return f"make the shapes agree{at}" + (f" ({seen})" if seen else "") + "; print x.shape before the call"


def remedy(rule: R.Rule, category: str, exc: Exc | None, text: str, samples: Sequence[Mapping] = ()) -> str:
    """One line: computed for the rules whose numbers decide, else the rule's, else its category's.
    ``samples`` are the monitor's last readings (a CUDA OOM's remedy quotes the GPU peak from them)."""
    if rule.name == "cuda_oom":
        return _cuda_oom(text, _gpu_peak(samples, text))
    if rule.name == "shape_mismatch" and category in (R.MODEL, R.VALID, R.DATA):
        return _shape(text, exc)
    if rule.remedy:
        return rule.remedy
    if category == R.UNKNOWN:
        last = exc.text.splitlines()[0] if exc and exc.text else ""
        return f"nothing structural matched; start from the last exception seen: {last}" if last else \
            "nothing structural matched; read the end of the output (tlog errors --traceback)"
    return CATEGORY_REMEDY.get(category, "")
