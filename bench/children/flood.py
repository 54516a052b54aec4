"""Child: write N metrics events to stdout as fast as the pipe takes them; reports how long writing took."""

import json
import os
import sys
import time

n = int(sys.argv[1])
chunk = 2000
lines = [f'\x1e@tlog {{"kind":"metrics","t":{time.time()},"step":{i},"data":{{"loss":0.5,"acc":0.9}}}}\n'
         for i in range(chunk)]
block = "".join(lines).encode()
out = sys.stdout.buffer
t0 = time.perf_counter()
for _ in range(n // chunk):
    out.write(block)
out.flush()
elapsed = time.perf_counter() - t0
with open(os.environ["BENCH_OUT"], "w") as f:
    json.dump({"events": n // chunk * chunk, "write_s": elapsed}, f)
