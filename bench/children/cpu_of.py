"""Child: run a script (``cpu_of.py SCRIPT ARGS...``) as ``python SCRIPT ARGS...`` would, then write the CPU
time of this process (and of the processes it waited for) to $BENCH_OUT: the training process's own cost, with
tlog's hook, probes and adapters in it when run under ``tlog run``, and without the supervisor's."""

import atexit
import json
import os
import resource
import runpy
import sys


def report() -> None:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    with open(os.environ["BENCH_OUT"], "w") as f:
        json.dump({"cpu_s": sum(u.ru_utime + u.ru_stime for u in usage)}, f)


atexit.register(report)
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name="__main__")
