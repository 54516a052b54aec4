"""Logs a step every few ms until the file argv[1] exists (the test frees the disk, then creates it), logs
ten more steps and exits; prints its own count of steps at the end."""

import os
import sys
import time

import tlog

step = 0
while not os.path.exists(sys.argv[1]):
    step += 1
    tlog.log(step=step, loss=1.0 / step)
    print(f"step {step}", flush=True)
    time.sleep(0.005)
for _ in range(10):
    step += 1
    tlog.log(step=step, loss=1.0 / step)
time.sleep(1.5)  # one retry period of the store, with the child still alive
step += 1
tlog.log(step=step, loss=1.0 / step)
print(f"STEPS {step}", flush=True)
