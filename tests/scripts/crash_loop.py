"""A loop without torch that reports its steps with tlog.log and fails as asked: fast restart-policy runs.

--fail-at STEP    raise before logging this step (0: never)
--error KIND      'network' (ConnectionResetError: transient), 'value' (ValueError: a bug), 'cuda_oom' (the
                  RuntimeError a CUDA OOM raises: recurs at the same batch size) or 'emfile' (opens files under
                  a lowered RLIMIT_NOFILE until the OS refuses)
--advance         fail one step later on each attempt (reads TLOG_ATTEMPT): progress between failures
--eval-sleep S    after step 2, spend S seconds inside a phase reported as validation
--hang-at STEP    on the first attempt only, stop making progress (sleep) after this step
"""

import argparse
import os
import resource
import time

import tlog

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=5)
p.add_argument("--fail-at", type=int, default=0)
p.add_argument("--error", choices=("network", "value", "cuda_oom", "emfile"), default="network")
p.add_argument("--advance", action="store_true")
p.add_argument("--eval-sleep", type=float, default=0.0)
p.add_argument("--hang-at", type=int, default=0)
args = p.parse_args()

attempt = int(os.environ.get("TLOG_ATTEMPT", "1"))
fail_at = args.fail_at + (attempt - 1 if args.advance and args.fail_at else 0)
for step in range(1, args.steps + 1):
    if step == fail_at:
        if args.error == "network":
            raise ConnectionResetError(104, "Connection reset by peer")
        if args.error == "cuda_oom":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total capacity; "
                               "9.12 GiB already allocated; 1.10 GiB free; 14.20 GiB reserved in total by PyTorch)")
        if args.error == "emfile":
            resource.setrlimit(resource.RLIMIT_NOFILE, (32, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
            held = [open(__file__) for _ in range(64)]  # held open until the OS refuses one (EMFILE)
        raise ValueError(f"learning rate schedule has no entry for step {step}")
    tlog.log(loss=1.0 / step, step=step)
    print(f"STEP {step}", flush=True)
    if step == 2 and args.eval_sleep:
        with tlog.phase("validation"):
            time.sleep(args.eval_sleep)
    if step == args.hang_at and attempt == 1:
        time.sleep(3600)
print("DONE", flush=True)
