"""Each framework's tiny job plain vs under ``tlog run --log-every 1`` (budget: <= 1.05 of plain), interleaved pairs.

The jobs are the test suite's (tests/scripts): HF Trainer (tiny GPT-2, 8 steps, eval and a checkpoint every
4), Lightning (an MLP, 3 epochs of 8 steps, validation and a .ckpt each epoch), accelerate (an MLP, 30 steps,
eval and save_state each epoch) and the nanoGPT-like loop (13 iterations, 4 evals, 3 checkpoints), each a
whole process as a user runs it: start-up and framework imports included.  Each pair runs plain and under tlog
back to back, in alternating order (after one unmeasured run of each, so both start from a warm page cache and
compiled bytecode); the figures are medians of the per-pair ratios: the training process's own CPU time
(user+sys, hook, probes and adapters included: the budget), the CPU time of the whole process tree (under tlog
the supervisor and its guardian too: tlog's fixed start-up and teardown, about a second on a loaded 2-core VM,
whatever the job) and the wall clock.  On a shared machine the wall clock also counts other processes' time:
trust the CPU figures there.

``python bench/bench_frameworks.py [PAIRS] [FRAMEWORK...]`` (default 5 pairs, every framework).
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import CHILDREN, env, median, verdict

ENV = {k: v for k, v in env().items() if k != "PYTHONDONTWRITEBYTECODE"} | {"HF_HUB_OFFLINE": "1"}
SCRIPTS = Path(__file__).resolve().parent.parent / "tests" / "scripts"
BUDGET = 1.05
JOBS = {
    "hf": ("hf_trainer.py", "--eval-steps", "4", "--save-steps", "4"),
    "lightning": ("lightning_train.py",),
    "accelerate": ("accelerate_train.py",),
    "nanogpt": ("nanogpt_like.py",),
}


def run(job: str, under_tlog: bool) -> tuple[float, float, float]:
    """(CPU seconds of the training process, CPU seconds of the process tree, wall seconds) of one run."""
    script, *args = JOBS[job]
    with tempfile.TemporaryDirectory() as tmp:
        out = ["--out_dir" if job == "nanogpt" else "--out", str(Path(tmp) / "out")]
        report = Path(tmp) / "report.json"
        cmd = [str(CHILDREN / "cpu_of.py"), str(SCRIPTS / script), *out, *args]
        if under_tlog:
            cmd = [sys.executable, "-m", "tlog", "run", "--quiet", "--log-every", "1", "--log-dir",
                   str(Path(tmp) / "logs"), *cmd]
        else:
            cmd = [sys.executable, *cmd]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        res = subprocess.run(cmd, env={**ENV, "BENCH_OUT": str(report)}, cwd=tmp, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
        tree = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return json.loads(report.read_text())["cpu_s"], tree, wall


if __name__ == "__main__":
    pairs_n = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    jobs = sys.argv[2:] or list(JOBS)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    for job in jobs:
        run(job, False), run(job, True)  # warm-up
        pairs = []
        for i in range(pairs_n):
            runs = {}
            for under in (False, True) if i % 2 == 0 else (True, False):
                runs[under] = run(job, under)
            pairs.append((runs[False], runs[True]))
        for k, what in ((0, "training process cpu"), (1, "process tree cpu"), (2, "wall")):
            ratio = median([inst[k] / plain[k] for plain, inst in pairs])
            budget = f"budget {BUDGET}: {verdict(ratio, BUDGET)}" if k == 0 else "shown, not budgeted"
            print(f"{job:>10} {what}: plain {median([p[k] for p, _ in pairs]):.2f} s, tlog run "
                  f"{median([t[k] for _, t in pairs]):.2f} s, median ratio {ratio:.3f} over {pairs_n} pairs "
                  f"({budget})")
