"""Reports on a 1,000,000-step experiment (6 metrics per step): wall time and peak RSS of each command.

Budgets (DESIGN.md): ``tlog summary`` <= 1 s, ``tlog plot`` <= 3 s, interpreter start included.  Cases:
a finished run (what the writer leaves at close), a run whose supervisor was SIGKILLed (its last snapshot
5 s behind events.jsonl), and the same crashed run with no derived files at all ("cold": an older tlog
wrote it, or it was copied without .tlog/), whose first plot builds the columns and whose summary folds
every event.  Each command runs in a fresh wrapper process, so RUSAGE_CHILDREN is its own peak RSS.

    python bench/bench_reports.py [--steps N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import env, verdict
from gen_experiment import generate

MEASURE = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
wall = time.perf_counter() - t0
print(json.dumps({"rc": rc, "wall": wall, "rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""
BUDGET = {"summary": 1.0, "plot": 3.0}


def measure(*args: str) -> dict:
    cmd = [sys.executable, "-c", MEASURE, sys.executable, "-m", "tlog", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env(), check=True).stdout
    result = json.loads(out)
    if result["rc"] != 0:
        raise SystemExit(f"tlog {' '.join(args)} failed with exit code {result['rc']}")
    return result


def report(label: str, command: str, result: dict) -> None:
    budget = BUDGET[command]
    print(f"  {label:<34} {result['wall']:6.2f} s  peak RSS {result['rss_mb']:5.0f} MB   "
          f"(budget {budget:g} s: {verdict(result['wall'], budget)})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--keep", type=Path, help="generate into (and leave in) this directory")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = args.keep or Path(tmp)
        exps = {}
        for variant in ("finished", "crashed", "cold"):
            exps[variant] = generate(log_dir, args.steps, variant)
        size = (exps["finished"] / "events.jsonl").stat().st_size / 1e6
        print(f"reports on {args.steps:,} steps, 6 metrics per step, events.jsonl {size:.0f} MB")
        out = Path(tmp) / "plot.png"
        for variant in ("finished", "crashed"):
            report(f"summary, {variant}", "summary", measure("summary", str(exps[variant])))
        report("summary, cold (folds every event)", "summary", measure("summary", str(exps["cold"])))
        report("summary, cold, second time", "summary", measure("summary", str(exps["cold"])))
        for variant in ("finished", "crashed"):
            report(f"plot, {variant}", "plot", measure("plot", str(exps[variant]), "-o", str(out)))
        report("plot, cold (builds the columns)", "plot", measure("plot", str(exps["cold"]), "-o", str(out)))
        report("plot, cold, second time", "plot", measure("plot", str(exps["cold"]), "-o", str(out)))


if __name__ == "__main__":
    main()
