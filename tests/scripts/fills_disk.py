"""Prints and logs enough to outgrow a small file size limit, then writes its own done-file (argv[1])."""

import sys

import tlog

for step in range(1, 1501):
    tlog.log(step=step, loss=1.0 / step, note_padding=step * 1.5)
    print(f"line {step} " + "x" * 40, flush=True)
with open(sys.argv[1], "w") as f:
    f.write("done")
