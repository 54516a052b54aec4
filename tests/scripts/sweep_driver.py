"""A sweep driver: logs its own metric, then runs each trial with ``tlog run`` (stdout inherited or captured).

Usage: sweep_driver.py LOG_DIR."""

import subprocess
import sys

import tlog

log_dir = sys.argv[1]
tlog.log({"trials": 2}, step=1)
trial = [sys.executable, "-m", "tlog", "run", "-q", "--log-dir", log_dir, "--name"]
subprocess.run([*trial, "trial-inherit", sys.argv[0].replace("sweep_driver", "odd_values")], check=True)
out = subprocess.run([*trial, "trial-captured", sys.argv[0].replace("sweep_driver", "odd_values")], check=True,
                     capture_output=True, text=True)
print("captured", out.returncode)
tlog.log({"trials_done": 2}, step=2)
