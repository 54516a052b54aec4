"""tlog's GPU paths against a real GPU, in one prepared command (< 5 minutes on one H100).

Six checks, each figure printed against its budget, then one PASS/FAIL line; a JSON report is written
(``--out PATH``, default ``bench/results/gpu_check-<date>.json``) and its path printed:

1. memory truth: ``tlog run`` of a small CUDA MLP job; the per-process GPU memory tlog recorded
   (system_metrics.csv, training_summary.json) against NVML read here independently, and against the child's
   ``torch.cuda.memory_reserved()`` plus its CUDA context;
2. zero syncs: the same job with ``torch.cuda.set_sync_debug_mode("warn")``, plain and under tlog: the
   synchronising calls warned about inside the steps (tlog must add 0) and outside them;
3. overhead: ~1 ms and ~10 ms GPU steps, plain vs ``tlog run``, interleaved pairs, median ratio <= 1.01;
4. a real CUDA OOM inside step 5: category memory, the step, no restart, a remedy naming sizes/free/reserved;
5. a device-side assert (embedding index out of range): category, phase, remedy with CUDA_LAUNCH_BLOCKING=1;
6. one-rank NCCL: ``tlog run -- torchrun --nproc_per_node 1`` of a DDP job: per-rank records, exit status.

Without CUDA it says so in one line and exits 0.  ``--cpu-selftest`` runs the children on ``cpu`` (no OOM, no
NCCL) so the parsing and the report are exercised before the script first meets a GPU; its verdicts mean nothing.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHILD = str(HERE / "children" / "cuda_job.py")
OVERHEAD_BUDGET = 1.01
MEM_TOL_MB, MEM_TOL_FRAC = 32.0, 0.02  # tlog vs NVML: the same counter read at other moments
CTX_TOL_MB, CTX_TOL_FRAC = 128.0, 0.10  # reserved + context vs NVML: kernels loaded lazily add to the context


def cuda_device() -> str | None:
    """The GPU's name, or None; asks NVML first so that this process makes no CUDA context of its own."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        return name.decode() if isinstance(name, bytes) else name
    except Exception:  # noqa: BLE001 - any NVML failure only loses the name
        return "unknown CUDA device (NVML not readable)"


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TLOG_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return {**env, **(extra or {})}


class Run:
    """One child run, plain or under ``tlog run``: its exit status, its own JSON report and tlog's files."""

    def __init__(self, work: Path, name: str, argv: list[str], under_tlog: bool, env: dict[str, str] | None = None,
                 torchrun: bool = False, timeout: float = 240) -> None:
        self.exp = work / "logs" / name
        out = work / f"{name}.child.json"
        launcher = [shutil.which("torchrun") or sys.executable, *([] if shutil.which("torchrun") else
                                                                   ["-m", "torch.distributed.run"])]
        target = ["--", *launcher, "--standalone", "--nproc_per_node", "1", CHILD] if torchrun else [CHILD]
        if under_tlog:
            cmd = [sys.executable, "-m", "tlog", "run", "--quiet", "--no-panel", "--log-dir", str(work / "logs"),
                   "--name", name, "--monitor-interval", "0.25", "--log-every", "1", *target, *argv]
        else:
            cmd = [*(target[1:] if torchrun else [sys.executable, CHILD]), *argv]
        t0 = time.perf_counter()
        try:
            res = subprocess.run(cmd, env=child_env({**(env or {}), "BENCH_OUT": str(out)}), cwd=work,
                                 capture_output=True, text=True, timeout=timeout)
            self.rc, self.stderr = res.returncode, res.stderr
        except subprocess.TimeoutExpired:
            self.rc, self.stderr = None, f"timed out after {timeout} s"
        self.wall_s = time.perf_counter() - t0
        self.child: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}

    def json(self, file: str) -> Any:
        path = self.exp / file
        return json.loads(path.read_text()) if path.exists() else None

    def csv(self, file: str) -> list[dict[str, str]]:
        path = self.exp / file
        if not path.exists():
            return []
        with path.open(newline="") as f:
            return list(csv.DictReader(f))

    def events(self) -> list[dict]:
        path = self.exp / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []

    def tail(self) -> str:
        return self.stderr.strip().splitlines()[-1] if self.stderr.strip() else ""


class NvmlPoller(threading.Thread):
    """NVML read here, independently of tlog: the highest per-process and device memory seen while it runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.max_procs_mb = 0.0
        self.total_mb: float | None = None
        self.error: str | None = None

    def run(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.total_mb = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**20
            while not self.stop.is_set():
                procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                used = sum((p.usedGpuMemory or 0) for p in procs if p.pid != os.getpid()) / 2**20
                self.max_procs_mb = max(self.max_procs_mb, used)
                time.sleep(0.05)
        except Exception as exc:  # noqa: BLE001 - no NVML: the figure says so instead
            self.error = f"{type(exc).__name__}: {exc}"


class Report:
    def __init__(self) -> None:
        self.checks: list[dict[str, Any]] = []

    def check(self, name: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": name, "figures": [], "notes": []}
        self.checks.append(entry)
        print(f"[{name}]")
        return entry

    @staticmethod
    def figure(entry: dict, what: str, value: Any, budget: str, ok: bool | None) -> None:
        entry["figures"].append({"what": what, "value": value, "budget": budget, "ok": ok})
        mark = {True: "ok", False: "FAIL", None: "info"}[ok]
        shown = f"{value:.3f}" if isinstance(value, float) else value
        print(f"  {what}: {shown} (budget: {budget}) {mark}")

    @staticmethod
    def note(entry: dict, text: str) -> None:
        entry["notes"].append(text)
        print(f"  note: {text}")


def near(a: float | None, b: float | None, tol_mb: float, frac: float) -> bool:
    return a is not None and b is not None and abs(a - b) <= max(tol_mb, frac * max(abs(b), 1.0))


def col_max(rows: list[dict[str, str]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    return max(values) if values else None


def check_memory_and_syncs(rep: Report, work: Path, device: str, steps: int) -> None:
    """Checks 1 and 2 share the tlog run: the sync counting does not change the memory."""
    poller = NvmlPoller()
    if device == "cuda":
        poller.start()
    run = Run(work, "memory", ["train", device, "2", str(steps)], True,
              env={"GPU_CHECK_SYNCS": "1", "GPU_CHECK_HOLD": "3" if device == "cuda" else "0"})
    poller.stop.set()
    plain = Run(work, "syncs-plain", ["train", device, "2", str(steps)], False, env={"GPU_CHECK_SYNCS": "1"})
    mem = rep.check("memory truth")
    rep.figure(mem, "tlog run exit status", run.rc, "0", run.rc == 0)
    system = run.csv("system_metrics.csv")
    used = col_max(system, "gpu0_used_mb")
    methods = sorted({r.get("gpu0_method", "") for r in system} - {""})
    rep.figure(mem, "tlog gpu0_used_mb max (system_metrics.csv)", used, "recorded", used is not None)
    rep.figure(mem, "tlog gpu0_method", ",".join(methods) or None, "process (NVML lists the pids)",
               methods == ["process"] if device == "cuda" else None)
    nvml = poller.max_procs_mb if poller.error is None and device == "cuda" else None
    if poller.error:
        rep.note(mem, f"NVML here: {poller.error}")
    rep.figure(mem, "NVML here, max per-process sum (MiB)", nvml,
               f"tlog within {MEM_TOL_MB:.0f} MiB or {MEM_TOL_FRAC:.0%}", near(used, nvml, MEM_TOL_MB, MEM_TOL_FRAC))
    child = run.child
    if child.get("reserved_mb") is not None and child.get("context_mb") is not None:
        expected = child["reserved_mb"] + child["context_mb"]
        rep.figure(mem, "child memory_reserved + context (MiB)", expected,
                   f"child's own NVML {child.get('nvml_own_mb')} within {CTX_TOL_MB:.0f} MiB or {CTX_TOL_FRAC:.0%}",
                   near(expected, child.get("nvml_own_mb"), CTX_TOL_MB, CTX_TOL_FRAC))
        rep.figure(mem, "tlog used vs child reserved + context (MiB)", (used or 0.0) - expected,
                   f"|diff| within {CTX_TOL_MB:.0f} MiB or {CTX_TOL_FRAC:.0%}",
                   near(used, expected, CTX_TOL_MB, CTX_TOL_FRAC))
        rep.note(mem, f"child: reserved {child['reserved_mb']:.1f} MiB, allocated {child['allocated_mb']:.1f} MiB, "
                      f"context {child['context_mb']:.1f} MiB, NVML own {child.get('nvml_own_mb')}")
    else:
        rep.figure(mem, "child memory_reserved + context", None, "readable on cuda",
                   False if device == "cuda" else None)
    peaks = ((run.json("training_summary.json") or {}).get("resources") or {}).get("peaks") or {}
    peak, total = peaks.get("gpu0_max_mb"), peaks.get("gpu0_total_mb")
    rep.figure(mem, "summary gpu0_max_mb", peak, "NVML max within tolerance, >= the CSV max",
               near(peak, nvml, MEM_TOL_MB, MEM_TOL_FRAC) and peak >= (used or 0) - 1 if peak is not None else False)
    rep.figure(mem, "summary gpu0_total_mb", total, f"NVML total {poller.total_mb} within 1 MiB",
               near(total, poller.total_mb, 1.0, 0.0))
    losses = [r for r in run.csv("training_metrics.csv") if r.get("loss") not in (None, "")]
    rep.figure(mem, "training_metrics.csv rows with a loss", len(losses), f"{steps} (every step)", len(losses) == steps)

    syn = rep.check("zero syncs")
    if device != "cuda":
        rep.note(syn, "sync debug mode exists on cuda only: counts are 0 here")
    rep.figure(syn, "plain: synchronising calls inside steps", plain.child.get("syncs_in_steps"), "baseline", None)
    extra = (child.get("syncs_in_steps", -1) - plain.child.get("syncs_in_steps", 0)) if child and plain.child else None
    rep.figure(syn, "tlog run: extra synchronising calls inside steps", extra, "0", extra == 0)
    rep.figure(syn, "tlog run: extra steps with a sync", None if extra is None else
               child.get("steps_with_syncs", 0) - plain.child.get("steps_with_syncs", 0), "0",
               None if extra is None else child.get("steps_with_syncs") == plain.child.get("steps_with_syncs"))
    outside = None if extra is None else (child["syncs_total"] - child["syncs_in_steps"]) - (
        plain.child["syncs_total"] - plain.child["syncs_in_steps"])
    rep.figure(syn, "tlog run: extra synchronising calls outside steps (windows, exit)", outside, "0 (aim)", None)
    if child.get("sync_samples"):
        rep.note(syn, f"warnings seen under tlog: {child['sync_samples']}")


def calibrate(work: Path, device: str, target_ms: float) -> int:
    """Layers for a step of about ``target_ms``: step time is about linear in the layer count."""
    a = Run(work, f"cal{target_ms:g}-a", ["train", device, "2", "60"], False).child.get("step_ms", 1.0)
    b = Run(work, f"cal{target_ms:g}-b", ["train", device, "10", "60"], False).child.get("step_ms", 2.0)
    per_layer = max((b - a) / 8, 1e-3)
    return int(min(max(2 + (target_ms - a) / per_layer, 1), 600))


def check_overhead(rep: Report, work: Path, device: str, pairs: int, sizes: list[tuple[float, int]]) -> None:
    ov = rep.check("overhead")
    for target_ms, steps in sizes:
        layers = calibrate(work, device, target_ms) if device == "cuda" else 2
        ratios, plain_ms, tlog_ms = [], [], []
        for i in range(pairs):
            runs = {}
            for under in ((False, True) if i % 2 == 0 else (True, False)):
                runs[under] = Run(work, f"ov{target_ms:g}-{i}-{int(under)}", ["train", device, str(layers), str(steps)],
                                  under)
            p, t = runs[False].child.get("step_ms"), runs[True].child.get("step_ms")
            if p and t:
                ratios.append(t / p)
                plain_ms.append(p)
                tlog_ms.append(t)
        ratio = statistics.median(ratios) if ratios else None
        rep.note(ov, f"~{target_ms:g} ms step: {layers} layers, {steps} steps, plain median "
                     f"{statistics.median(plain_ms) if plain_ms else None} ms, tlog median "
                     f"{statistics.median(tlog_ms) if tlog_ms else None} ms, per pair {[round(r, 4) for r in ratios]}")
        rep.figure(ov, f"~{target_ms:g} ms step: median ratio tlog/plain over {len(ratios)} pairs", ratio,
                   f"<= {OVERHEAD_BUDGET}", ratio is not None and ratio <= OVERHEAD_BUDGET)


def first_error(run: Run) -> dict:
    errors = run.json("training_errors.json")
    return errors[0] if isinstance(errors, list) and errors else {}


def check_oom(rep: Report, work: Path) -> None:
    run = Run(work, "oom", ["oom", "cuda"], True)
    oom = rep.check("CUDA OOM")
    err, summary = first_error(run), run.json("training_summary.json") or {}
    rep.figure(oom, "tlog run exit status", run.rc, "non-zero", run.rc not in (0, None))
    rep.figure(oom, "category", err.get("category"), "memory", err.get("category") == "memory")
    rep.figure(oom, "step", err.get("step"), "4 (completed steps before the failing 5th, as on cpu)",
               err.get("step") == 4)
    rep.figure(oom, "restarts", summary.get("restarts"), "0 (never by default)", summary.get("restarts") == 0)
    remedy = err.get("remedy")
    if remedy is None:
        rep.figure(oom, "remedy", None, "present in training_errors.json", False)
    else:
        low = remedy.lower()
        wanted = {"a size": bool(re.search(r"\d+(\.\d+)? ?[kmgt]i?b", low)), "free": "free" in low,
                  "reserved": "reserved" in low, "allocated": "allocat" in low}
        rep.figure(oom, "remedy names", {k: v for k, v in wanted.items()}, "size, free, reserved, allocated",
                   all(wanted.values()))
        rep.note(oom, f"remedy: {remedy}")
    rep.note(oom, f"cause: {err.get('cause')}; message: {(err.get('error_message') or '')[:300]}")


def check_assert(rep: Report, work: Path, device: str) -> None:
    run = Run(work, "assert", ["assert", device], True)
    dev = rep.check("device-side assert")
    err = first_error(run)
    rep.figure(dev, "tlog run exit status", run.rc, "non-zero", run.rc not in (0, None))
    rep.figure(dev, "category", err.get("category"), "a known category (not unknown)",
               err.get("category") not in (None, "unknown"))
    rep.figure(dev, "phase", err.get("phase"), "recorded", err.get("phase") is not None)
    remedy = err.get("remedy")
    rep.figure(dev, "remedy mentions CUDA_LAUNCH_BLOCKING=1", remedy, "CUDA_LAUNCH_BLOCKING=1",
               remedy is not None and "CUDA_LAUNCH_BLOCKING=1" in remedy if device == "cuda" else None)
    if remedy is None:
        rep.note(dev, "no remedy field in training_errors.json")
    rep.note(dev, f"message: {(err.get('error_message') or run.tail())[:300]}")


def check_nccl(rep: Report, work: Path) -> None:
    run = Run(work, "ddp", ["ddp", "cuda", "2", "100"], True, torchrun=True)
    dd = rep.check("one-rank NCCL")
    summary = run.json("training_summary.json") or {}
    rep.figure(dd, "tlog run exit status", run.rc, "0", run.rc == 0)
    rep.figure(dd, "summary status", summary.get("status"), "completed", summary.get("status") == "completed")
    rep.figure(dd, "child rank/world size", f"{run.child.get('rank')}/{run.child.get('world_size')}", "0/1",
               run.child.get("rank") == 0 and run.child.get("world_size") == 1)
    ranks = sorted({str(e.get("rank")) for e in run.events() if e.get("rank") is not None})
    rep.figure(dd, "ranks in events.jsonl", ranks, "['0']", ranks == ["0"])
    rows = run.csv("training_metrics.csv")
    rep.figure(dd, "training_metrics.csv rows", len(rows), "100", len(rows) == 100)
    if run.rc != 0:
        rep.note(dd, run.tail())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON report path")
    parser.add_argument("--cpu-selftest", action="store_true", help="run the children on cpu (no OOM, no NCCL)")
    args = parser.parse_args(argv)
    gpu = "cpu (self-test)" if args.cpu_selftest else cuda_device()
    if gpu is None:
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing run.")
        return 0
    device = "cpu" if args.cpu_selftest else "cuda"
    import torch

    t0 = time.perf_counter()
    rep = Report()
    print(f"gpu_check on {gpu}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.cpu_selftest:
            os.environ["GPU_CHECK_WIDTH"] = "64"
            check_memory_and_syncs(rep, work, device, steps=30)
            check_overhead(rep, work, device, pairs=1, sizes=[(1.0, 30)])
            check_assert(rep, work, device)
        else:
            check_memory_and_syncs(rep, work, device, steps=300)
            check_overhead(rep, work, device, pairs=5, sizes=[(1.0, 1000), (10.0, 150)])
            check_oom(rep, work)
            check_assert(rep, work, device)
            check_nccl(rep, work)
    for entry in rep.checks:
        oks = [f["ok"] for f in entry["figures"] if f["ok"] is not None]
        entry["pass"] = bool(oks) and all(oks)
    passed = all(entry["pass"] for entry in rep.checks)
    wall = time.perf_counter() - t0
    out = args.out or HERE / "results" / f"gpu_check-{datetime.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"gpu": gpu, "torch": torch.__version__, "selftest": args.cpu_selftest,
                               "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                               "wall_s": round(wall, 1), "pass": passed, "checks": rep.checks}, indent=1))
    print(f"report: {out}")
    failed = [entry["name"] for entry in rep.checks if not entry["pass"]]
    if args.cpu_selftest:
        print(f"SELFTEST DONE in {wall:.0f} s (verdicts on cpu mean nothing)")
        return 0
    print(f"{'PASS' if passed else 'FAIL'} in {wall:.0f} s" + (f": {', '.join(failed)}" if failed else ""))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
