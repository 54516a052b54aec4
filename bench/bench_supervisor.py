"""The supervisor's own cost: CPU % of one core and RSS while a child emits 1,000 events/s,
with the live panel drawn into a pseudo-terminal (budget: <= 5 % of one core, RSS flat).

CPU is the supervisor process's user+system time over the run's wall time, measured from outside
with psutil; RSS is sampled every second, and "growth" compares the second half of the run with
the first (flat means no growth with run length).
"""

import os
import pty
import subprocess
import sys
import tempfile
import threading
import time

import psutil
from _common import CHILDREN, env, verdict

RATE, SECONDS = 1000, 20
BUDGET_CPU = 5.0


def drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        master, slave = pty.openpty()
        os.set_blocking(master, True)
        panel = os.environ.get("PANEL", "--panel")  # PANEL=--no-panel measures the plain display
        cmd = [sys.executable, "-m", "tlog", "run", panel, "--log-dir", tmp, str(CHILDREN / "steady.py"),
               str(RATE), str(SECONDS)]
        proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env={**env(), "COLUMNS": "120"},
                                close_fds=True)
        os.close(slave)
        threading.Thread(target=drain, args=(master,), daemon=True).start()
        ps = psutil.Process(proc.pid)
        time.sleep(3.0)  # past interpreter start-up and the child's imports
        cpu0, t0 = sum(ps.cpu_times()[:2]), time.perf_counter()
        rss = []
        while proc.poll() is None:
            try:
                rss.append(ps.memory_info().rss / 2**20)
                cpu1, t1 = sum(ps.cpu_times()[:2]), time.perf_counter()
            except psutil.NoSuchProcess:
                break
            time.sleep(1.0)
        proc.wait()
        cpu = 100.0 * (cpu1 - cpu0) / (t1 - t0)
        half = len(rss) // 2
        first, second = max(rss[:half]), max(rss[half:])
        print(f"supervisor at {RATE:,} events/s with the panel on (pty): {cpu:.1f} % of one core "
              f"(budget {BUDGET_CPU} %: {verdict(cpu, BUDGET_CPU)}); RSS {first:.1f} MB in the first half, "
              f"{second:.1f} MB in the second ({second - first:+.1f} MB)")


if __name__ == "__main__":
    main()
