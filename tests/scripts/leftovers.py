"""A run that leaves processes behind: a plain child, a setsid child, a setsid Python child (hooked like the
script) and a daemon whose parent exits at once; all hold the run's stdout.  Prints nothing: the pids go to
the file named by argv[1] (written last, atomically), then it sleeps (``wait``) or exits 0 (``exit``)."""

import os
import subprocess
import sys
import time

out, mode = sys.argv[1], sys.argv[2]
kids = [subprocess.Popen(["sleep", "1000"]),
        subprocess.Popen(["sleep", "1001"], start_new_session=True),
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"], start_new_session=True)]
subprocess.run(["bash", "-c", f"setsid sleep 1002 & echo $! > {out}.daemon"], check=True)
with open(out + ".daemon") as f:
    daemon = int(f.read())
with open(out + ".tmp", "w") as f:
    f.write(" ".join(str(p) for p in [os.getpid(), *(k.pid for k in kids), daemon]))
os.replace(out + ".tmp", out)
if mode == "exit":
    sys.exit(0)
time.sleep(1000)
