"""No torch: ``tlog.log`` N values, then wait, making no other call, until events.jsonl holds them all, and
SIGKILL itself: the emitter's flusher must write held lines on its own, and what it wrote survives."""

import os
import signal
import sys
import time

import tlog

n = int(sys.argv[1])
for i in range(1, n + 1):
    tlog.log(step=i, value=i * 0.5)
path = os.path.join(os.environ["TLOG_EXP_DIR"], "events.jsonl")
while open(path).read().count('"value":') < n:
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)
