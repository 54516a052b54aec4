"""Child: emit metrics events at a steady rate for a while, printing a line of output every second."""

import sys
import time

import tlog

rate = float(sys.argv[1]) if len(sys.argv) > 1 else 1000.0
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
period = 1.0 / rate
start = time.perf_counter()
step = 0
next_t = start
while time.perf_counter() - start < seconds:
    step += 1
    tlog.log(loss=1.0 / step, accuracy=1 - 1.0 / step, lr=1e-3, grad_norm=0.5, step=step, epoch=step // 5000,
             batch=step % 5000)
    if step % int(rate) == 0:
        print(f"step {step}", flush=True)
    next_t += period
    delay = next_t - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
