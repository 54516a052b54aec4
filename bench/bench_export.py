"""``tlog export`` of a 1,000,000-step experiment (6 metrics per step): wall time and peak RSS per target.

Budgets (issue 17): Parquet <= 3 s, TensorBoard <= 30 s, interpreter start included; the second export of
each replaces the first (same files, no duplicated points).  MLflow is measured on a shorter run
(``--mlflow-steps``): its SQLite store takes each point through SQLAlchemy, which no budget covers.

    python bench/bench_export.py [--steps N] [--mlflow-steps N]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import verdict
from bench_reports import measure
from gen_experiment import generate

BUDGET = {"parquet": 3.0, "tensorboard": 30.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--mlflow-steps", type=int, default=20_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exp = generate(Path(tmp), args.steps, "finished")
        size = (exp / "events.jsonl").stat().st_size / 1e6
        print(f"export of {args.steps:,} steps, 6 metrics per step, events.jsonl {size:.0f} MB")
        for target, budget in BUDGET.items():
            for label in ("first", "again"):
                r = measure("export", str(exp), "--to", target, "--out", str(Path(tmp) / target))
                print(f"  {target + ', ' + label:<24} {r['wall']:6.2f} s  peak RSS {r['rss_mb']:5.0f} MB   "
                      f"(budget {budget:g} s: {verdict(r['wall'], budget)})")
        small = generate(Path(tmp) / "small", args.mlflow_steps, "finished")
        r = measure("export", str(small), "--to", "mlflow", "--out", f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        print(f"  mlflow, {args.mlflow_steps:,} steps   {r['wall']:6.2f} s  peak RSS {r['rss_mb']:5.0f} MB")


if __name__ == "__main__":
    main()
