"""What a practitioner would try first, concrete to the evidence: one line with each diagnosis.

A rule names a remedy in ``Rule.remedy``; the few whose best advice depends on numbers in the message (a CUDA
OOM's sizes, a shape error's shapes and module) are computed here.  Standard library only, like the classifier.
"""

from __future__ import annotations

import re

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


def _cuda_oom(text: str) -> str:
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
             f"{unallocated[0]} reserved but unallocated" if unallocated else ""]
    said = ", ".join(f for f in facts if f)
    fragmented = unallocated and ((want and unallocated[1] >= want[1]) or
                                  (allocated and unallocated[1] > 0.25 * allocated[1]))
    advice = ("memory is fragmented: set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, then lower the batch "
              "size if it still fails" if fragmented else
              "lower the batch size, enable activation checkpointing or mixed precision; "
              "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True if reserved grows far beyond allocated")
    return f"{advice} ({said})" if said else advice


def _module(exc: Exc | None) -> str:
    """The layer that raised: the deepest torch.nn module file, else the deepest forward in user code."""
    frames = exc.frames if exc else []
    for frame in reversed(frames):
        if m := re.search(r"torch/nn/modules/(\w+)\.py", frame.file):
            return _MODULES.get(m[1], f"torch.nn ({m[1]}.py)")
    site = exc.site() if exc else None
    return site.short() if site else ""


def _shape(text: str, exc: Exc | None) -> str:
    module = _module(exc)
    at = f" at {module}" if module else ""
    if m := re.search(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)", text):
        return (f"the input has {m[2]} features but{' ' + module if module else ' the layer'} expects {m[3]} "
                f"({m[1]}x{m[2]} @ {m[3]}x{m[4]}): set in_features={m[2]} or reshape the input before it")
    shapes = re.findall(r"\[[\d, ]+\]|\(\d+(?:x\d+)+\)|torch\.Size\(\[[\d, ]*\]\)|size \d+", text)
    seen = ", ".join(dict.fromkeys(shapes[:4]))
    return f"make the shapes agree{at}" + (f" ({seen})" if seen else "") + "; print x.shape before the call"


def remedy(rule: R.Rule, category: str, exc: Exc | None, text: str) -> str:
    """One line: computed for the rules whose numbers decide, else the rule's, else its category's."""
    if rule.name == "cuda_oom":
        return _cuda_oom(text)
    if rule.name == "shape_mismatch" and category in (R.MODEL, R.VALID, R.DATA):
        return _shape(text, exc)
    if rule.remedy:
        return rule.remedy
    if category == R.UNKNOWN:
        last = exc.text.splitlines()[0] if exc and exc.text else ""
        return f"nothing structural matched; start from the last exception seen: {last}" if last else \
            "nothing structural matched; read the end of the output (tlog errors --traceback)"
    return CATEGORY_REMEDY.get(category, "")
