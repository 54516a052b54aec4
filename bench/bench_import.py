"""Start-up cost of the hook in a supervised child: ``python -c pass`` with and without tlog's sitecustomize
on PYTHONPATH (budget: <= 20 ms added, median of interleaved runs), then ``-X importtime`` of the hook's own
modules.  torch is not imported: its probe installs only if the script imports torch, and is counted with it.

Bytecode is cached as in any installed package (a warm-up run writes it, even if PYTHONDONTWRITEBYTECODE is
set in this shell): compiling tlog's sources at every start would be measured otherwise.
"""

import subprocess
import sys
import time

from _common import env, median, verdict

from tlog.supervisor.launch import child_env

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 40
BUDGET_MS = 20.0


def start_ms(environ: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=environ, check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - t0) * 1e3


if __name__ == "__main__":
    plain = {k: v for k, v in env().items() if k != "PYTHONDONTWRITEBYTECODE"}
    hooked = {k: v for k, v in child_env({}).items() if k != "PYTHONDONTWRITEBYTECODE" and (
        not k.startswith("TLOG_") or k in ("TLOG_SUPERVISED", "TLOG_PKG_DIR"))}
    start_ms(plain), start_ms(hooked)  # warm-up: bytecode written once, as an installed package has it
    diffs, bare, with_hook = [], [], []
    for i in range(RUNS):
        order = (plain, hooked) if i % 2 == 0 else (hooked, plain)
        times = {id(e): start_ms(e) for e in order}
        bare.append(times[id(plain)])
        with_hook.append(times[id(hooked)])
        diffs.append(times[id(hooked)] - times[id(plain)])
    added = median(diffs)
    print(f"python -c pass: {median(bare):.1f} ms plain, {median(with_hook):.1f} ms with the hook; median added "
          f"{added:.1f} ms over {RUNS} interleaved pairs (budget {BUDGET_MS:g} ms: {verdict(added, BUDGET_MS)})")
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], env=hooked, capture_output=True,
                         text=True, check=True).stderr
    rows = [line.split("|") for line in out.splitlines() if line.startswith("import time:") and "tlog" in line]
    own = sorted(((int(r[0].split(":")[1]), r[2].strip()) for r in rows if r[0].split(":")[1].strip().isdigit()),
                 reverse=True)
    print("largest self import times under the hook (us): " + ", ".join(f"{name} {us}" for us, name in own[:6]))
    cumulative = [line for line in out.splitlines() if line.rstrip().endswith(" sitecustomize")]
    if cumulative:
        print("sitecustomize cumulative: " + cumulative[-1].split("|")[1].strip() + " us")
