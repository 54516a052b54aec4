"""Generate a long experiment in the exact format ``tlog run`` writes, for the report benchmarks.

    python bench/gen_experiment.py LOG_DIR [--steps 1000000] [--variant finished|crashed|cold]

Per report window of 500 steps (the default: one report per 0.5 s at 1 kHz), one metrics event as the probe
emits it: ``steps`` columns (loss, the learning rate where it changed, and the script's ``tlog.log`` values
accuracy/gradient_norm/perplexity, merged into their rows) for the window's earlier steps, the last step's
values in ``data`` with samples_per_s and total_batches; validation metrics at each epoch end, a resource
sample every 1,000 steps, a checkpoint every 50,000 steps.

Variants: ``finished`` ends with the attempt's exit and what the writer leaves at close (final summary,
summary state, columns); ``crashed`` is a run whose supervisor was SIGKILLed: the last line is half
written, there is no exit, and the writer's last snapshot (live summary, summary state, columns) is 5 s
(5,000 steps) older than the end of events.jsonl; ``cold`` is the crashed run without any derived file
(written by an older tlog, or copied without its ``.tlog`` folder).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from tlog import protocol
from tlog.store import columns, layout, snapshot
from tlog.store.reader import iter_events
from tlog.store.safefile import write_json
from tlog.store.summary import SummaryBuilder

BATCHES = 5000
STEP_S = 0.001
T0 = 1_790_000_000.0
DEAD_PID = 2**22 + 12345  # above the default pid_max: never a live process
ARGV = ["/usr/bin/python3", "-u", "train.py", "--lr", "0.001", "--epochs", "200"]

WINDOW = 500
VALID = ('{"kind":"metrics","t":%r,"step":%d,"epoch":%d,"batch":%d,"data":{"validation_loss":%r,'
         '"validation_accuracy":%r},"attempt":1}\n')
SYSTEM = ('{"kind":"system","t":%r,"attempt":1,"data":{"t":%r,"elapsed_s":%r,"rss_mb":%r,"rss_min_mb":%r,'
          '"rss_mean_mb":%r,"rss_max_mb":%r,"rss_peak_mb":%r,"cpu_percent":99.5,"nprocs":3,'
          '"mem_limit_mb":65536.0,"mem_limit_source":"cgroup","headroom_mb":%r}}\n')
CHECKPOINT = ('{"kind":"checkpoint","t":%r,"step":%d,"epoch":%d,"batch":%d,"data":{"path":"ckpt/step%d.pt",'
              '"bytes":104857600},"attempt":1}\n')


def head_events() -> list[dict]:
    """What the supervisor and the hook write before the first step."""
    opts = {"target": ARGV[2:], "is_command": False, "name": "bench", "log_dir": "training_logs", "grace": 10.0}
    return [
        {"kind": "meta", "t": T0, "attempt": 0, "data": {"host": platform.node(), "tlog": "0.1.0",
                                                         "supervisor_pid": DEAD_PID, "command": ARGV, "cwd": "/work"}},
        {"kind": "config", "t": T0, "attempt": 0, "data": {"tlog": opts, "command": ARGV}},
        {"kind": "attempt", "t": T0 + 0.01, "attempt": 1, "data": {"event": "start", "attempt": 1, "pid": 4242,
                                                                   "argv": ARGV}},
        {"kind": "meta", "t": T0 + 0.05, "attempt": 1, "data": {"argv": ARGV, "cwd": "/work", "pid": 4242,
                                                                "python": "3.11.7"}},
    ]


def step_lines(first: int, last: int, rng: np.random.Generator) -> str:
    """Events of steps ``first``..``last`` (inclusive), in the order the supervisor writes them."""
    s = np.arange(first, last + 1)
    t = T0 + 1.0 + s * STEP_S
    noise = rng.standard_normal(len(s))
    loss = 2.5 * np.exp(-s / 150_000) + 0.05 + 0.02 * np.abs(noise)
    lr = 1e-3 * (0.5 ** (s // 250_000))
    acc = 1.0 - loss / 3.0
    grad = 0.5 + 0.1 * np.abs(rng.standard_normal(len(s)))
    sps = 64_000 + 500 * rng.standard_normal(len(s))
    epoch, batch = (s - 1) // BATCHES, (s - 1) % BATCHES
    cols = [c.tolist() for c in (t, s, epoch, batch, loss, lr, acc, grad, sps, np.exp(loss))]
    out = []
    dumps = protocol.dumps
    for a in range(0, len(s), WINDOW):
        ti, si, ei, bi, lo, lri, ai, gi, spi, pi = (c[a:a + WINDOW] for c in cols)
        changed = [lri[0], *[v if v != p else None for p, v in itertools.pairwise(lri)]]
        window = {"kind": "metrics", "t": ti[-1], "step": si[-1], "epoch": ei[-1], "batch": bi[-1], "src": "auto",
                  "data": {"loss": lo[-1], "learning_rate": lri[-1], "accuracy": ai[-1], "gradient_norm": gi[-1],
                           "perplexity": pi[-1], "samples_per_s": spi[-1], "total_batches": BATCHES},
                  "steps": {"step": si[:-1], "batch": bi[:-1], "loss": lo[:-1], "learning_rate": changed[:-1],
                            "accuracy": ai[:-1], "gradient_norm": gi[:-1], "perplexity": pi[:-1]},
                  "attempt": 1}
        out.append(dumps(window).decode() + "\n")
        if bi[-1] == BATCHES - 1:
            out.append(VALID % (ti[-1] + 0.0002, si[-1], ei[-1], bi[-1], lo[-1] * 1.1, ai[-1] * 0.98))
        for k in range(len(si)):
            if si[k] % 1000 == 0:
                rss = 4000.0 + si[k] / 1000.0
                out.append(SYSTEM % (ti[k] + 0.0003, ti[k], ti[k] - T0, rss, rss - 5, rss - 2, rss + 5, rss + 5,
                                     65536.0 - rss))
            if si[k] % 50_000 == 0:
                out.append(CHECKPOINT % (ti[k] + 0.0004, si[k], ei[k], bi[k], si[k]))
    return "".join(out)


def write_steps(f, first: int, last: int, rng: np.random.Generator) -> None:
    for start in range(first, last + 1, 100_000):
        f.write(step_lines(start, min(last, start + 99_999), rng))


def derive(exp: Path, final_status: str | None) -> None:
    """What the writer leaves: the summary (final or live), the fold's state and the columns."""
    builder = SummaryBuilder(exp.name)
    for event in iter_events(exp):
        builder.add(event)
    if final_status is not None:
        builder.status = final_status
    write_json(exp / layout.SUMMARY, builder.result())
    write_json(exp / layout.ERRORS, [])
    write_json(exp / layout.CONFIG, builder.config)
    snapshot.save_state(exp, (exp / layout.EVENTS).stat().st_size, builder)
    columns.update(exp)  # complete, as the writer's periodic updates leave them at a logging rate it keeps up with


def generate(log_dir: Path, steps: int, variant: str) -> Path:
    exp = log_dir / f"bench-{variant}-{steps}"
    if exp.exists():
        shutil.rmtree(exp)
    exp.mkdir(parents=True)
    rng = np.random.default_rng(0)
    tail = min(5000, steps // 2) if variant != "finished" else 0
    with open(exp / layout.EVENTS, "w") as f:
        f.writelines(json.dumps(e, separators=(",", ":")) + "\n" for e in head_events())
        write_steps(f, 1, steps - tail, rng)
    if variant == "crashed":
        derive(exp, None)  # the writer's last snapshot before the supervisor died
    with open(exp / layout.EVENTS, "a") as f:
        if variant == "finished":
            end = T0 + 2.0 + steps * STEP_S
            f.write(json.dumps({"kind": "attempt", "t": end, "attempt": 1, "data": {
                "event": "exit", "attempt": 1, "exit_code": 0, "status": "finished"}}, separators=(",", ":")) + "\n")
        else:
            write_steps(f, steps - tail + 1, steps, rng)
            f.write(f'{{"kind":"metrics","t":{T0 + 2.0 + steps * STEP_S!r},"step":{steps + 1},"data":{{"lo')
    if variant == "finished":
        derive(exp, "finished")
    return exp


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log_dir", type=Path)
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--variant", choices=("finished", "crashed", "cold"), default="finished")
    args = p.parse_args()
    t0 = time.perf_counter()
    exp = generate(args.log_dir, args.steps, args.variant)
    size = (exp / layout.EVENTS).stat().st_size
    print(f"{exp}: {args.steps:,} steps, events.jsonl {size / 1e6:.0f} MB, in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
