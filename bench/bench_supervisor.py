"""The supervisor's own cost: CPU % of one core and RSS with the live panel drawn into a pseudo-terminal
(budget: <= 5 % of one core at 1,000 events or steps/s, <= 15 % at 10,000 steps/s, RSS flat).

Cases: a child calling ``tlog.log`` 1,000 times a second (one event each), and a tiny real torch loop
(``children/torch_steps.py``) at 1,000 and 10,000 optimizer steps/s, every step captured by the probe; the
rate the loop really reached is printed beside its figure (a loaded machine may not reach 10,000).

CPU is the supervisor process's user+system time over the run's wall time, measured from outside
with psutil; RSS is sampled every second, and "growth" compares the second half of the run with
the first (flat means no growth with run length).
"""

import json
import os
import pty
import subprocess
import sys
import tempfile
import threading
import time

import psutil
from _common import CHILDREN, env, verdict

SECONDS = 20
CASES = (("tlog.log events", "steady.py", 1000, 5.0), ("torch steps", "torch_steps.py", 1000, 5.0),
         ("torch steps", "torch_steps.py", 10_000, 15.0))


def drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass


def measure(what: str, child: str, rate: int, budget: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        master, slave = pty.openpty()
        os.set_blocking(master, True)
        panel = os.environ.get("PANEL", "--panel")  # PANEL=--no-panel measures the plain display
        out = os.path.join(tmp, "child.json")
        cmd = [sys.executable, "-m", "tlog", "run", panel, "--log-dir", tmp, str(CHILDREN / child),
               str(rate), str(SECONDS)]
        proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave,
                                env={**env(), "COLUMNS": "120", "BENCH_OUT": out}, close_fds=True)
        os.close(slave)
        threading.Thread(target=drain, args=(master,), daemon=True).start()
        ps = psutil.Process(proc.pid)
        time.sleep(5.0)  # past interpreter start-up and the child's imports (torch: seconds on a loaded machine)
        cpu0, t0 = sum(ps.cpu_times()[:2]), time.perf_counter()
        cpu1, t1 = cpu0, t0
        rss = []
        while proc.poll() is None:
            try:
                rss.append(ps.memory_info().rss / 2**20)
                cpu1, t1 = sum(ps.cpu_times()[:2]), time.perf_counter()
            except psutil.NoSuchProcess:
                break
            time.sleep(1.0)
        proc.wait()
        cpu = 100.0 * (cpu1 - cpu0) / max(t1 - t0, 1e-9)
        half = len(rss) // 2
        first, second = max(rss[:half], default=0.0), max(rss[half:], default=0.0)
        reached = ""
        if os.path.exists(out):
            with open(out) as f:
                reached = f" (reached {json.load(f)['steps_per_s']:,.0f}/s)"
        print(f"supervisor at {rate:,} {what}/s{reached} with the panel on (pty): {cpu:.1f} % of one core "
              f"(budget {budget} %: {verdict(cpu, budget)}); RSS {first:.1f} MB in the first half, "
              f"{second:.1f} MB in the second ({second - first:+.1f} MB)")


def main() -> None:
    only = sys.argv[1:]  # e.g. "torch": the cases whose child name holds one of these words
    for case in CASES:
        if not only or any(word in case[1] for word in only):
            measure(*case)


if __name__ == "__main__":
    main()
