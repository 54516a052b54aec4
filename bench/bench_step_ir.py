"""Instructions the probe adds per training step, counted by valgrind: a figure that machine noise cannot move.

On a shared VM the timed bench (bench_step.py) wanders by more than the 2 % it judges on a ~0.1 ms step.  This
one runs the same child (children/step_loop.py, the ~0.1 ms loop) under cachegrind, plain and as a supervised
child (tlog's hook on PYTHONPATH, its events written to /dev/null), each at two step counts: the
difference between the counts is what a step costs, start-up and exit cancel out.  Instructions are not time
(cache misses are not counted), but every instruction the probe adds is one the step pays.

The default schedule reports every 0.5 s; under valgrind a step is ~50x slower, so the child gets
TLOG_LOG_EVERY=2500 instead, the number of ~0.2 ms steps in 0.5 s: as many reports per step as a real run.

``python bench_step_ir.py [STEPS_LOW STEPS_HIGH]`` (default 500 2500; four runs of a minute or two, two at a
time).  Needs valgrind; without it, says so and skips.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import CHILDREN, env, verdict

from tlog.supervisor.launch import child_env

LOW, HIGH = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (500, 2500)
BUDGET = 1.02
REPORT_EVERY = "2500"
# The same dict layouts in every run (PYTHONHASHSEED) and no idle BLAS/OpenMP threads spinning into the count.
THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def instructions(hooked: bool, steps: int) -> int:
    fixed = {"PYTHONHASHSEED": "0", **{k: "1" for k in THREADS}}
    environ = {**child_env({"TLOG_LOG_EVERY": REPORT_EVERY}), **fixed} if hooked else {**env(), **fixed}
    with tempfile.TemporaryDirectory() as tmp:
        environ["BENCH_OUT"] = str(Path(tmp) / "out.json")
        res = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                              sys.executable, str(CHILDREN / "step_loop.py"), "0.1ms", str(steps)],
                             env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    m = re.search(r"I\s+refs:\s+([\d,]+)", res.stderr)
    if res.returncode != 0 or not m:
        raise SystemExit(f"valgrind run failed ({res.returncode}):\n{res.stderr[-2000:]}")
    return int(m.group(1).replace(",", ""))


if __name__ == "__main__":
    if shutil.which("valgrind") is None:
        print("bench_step_ir.py: skipped, valgrind is not installed (apt-get install valgrind)")
        sys.exit(0)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    instructions(True, 200)  # bytecode written once, as an installed package has it
    runs = [(hooked, steps) for hooked in (False, True) for steps in (LOW, HIGH)]
    with ThreadPoolExecutor(2) as pool:
        counts = dict(zip(runs, pool.map(lambda r: instructions(*r), runs), strict=True))
    plain = (counts[False, HIGH] - counts[False, LOW]) / (HIGH - LOW)
    hooked = (counts[True, HIGH] - counts[True, LOW]) / (HIGH - LOW)
    ratio = hooked / plain
    print(f"~0.1ms step: {plain:,.0f} instructions plain, {hooked:,.0f} under tlog's hook: +{hooked - plain:,.0f} "
          f"per step, ratio {ratio:.4f} (budget {BUDGET}: {verdict(ratio, BUDGET)})")
