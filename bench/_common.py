"""Shared by the benchmarks: run tlog or plain python on a child script and collect its JSON report."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILDREN = HERE / "children"


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TLOG_")}


def run_child(child: str, *args: str, under_tlog: bool, tlog_args: tuple[str, ...] = ()) -> tuple[dict, float]:
    """Run ``children/<child>`` and return (the JSON it wrote to $BENCH_OUT, wall seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        script = str(CHILDREN / child)
        if under_tlog:
            cmd = [sys.executable, "-m", "tlog", "run", "--quiet", "--log-dir", str(Path(tmp) / "logs"),
                   *tlog_args, script, *args]
        else:
            cmd = [sys.executable, "-u", script, *args]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, env={**env(), "BENCH_OUT": str(out)}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr}")
        wall = time.perf_counter() - t0
        return json.loads(out.read_text()), wall


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def verdict(value: float, budget: float, higher_is_better: bool = False) -> str:
    ok = value >= budget if higher_is_better else value <= budget
    return "within budget" if ok else "OVER BUDGET"
