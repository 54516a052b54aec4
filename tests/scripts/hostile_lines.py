"""Throws generated hostile event lines at the supervisor, between lines of its own output and real metrics.

Usage: hostile_lines.py COUNT SEED.  Every 100 hostile lines it prints ``own <i>`` and logs ``good`` at step i;
it ends with ``done <count>``.  A reader that died would close the pipe and the next print would fail.
"""

import json
import random
import sys

import tlog

FORGED = ("system", "attempt", "error", "restart", "crash", "meta", "warning", "phase", "checkpoint", "config",
          "metrics", "bogus", 7, None, [], {})
KEYS = ("kind", "data", "t", "step", "epoch", "batch", "rank", "local_rank", "world_size", "attempt", "src", "node",
        "phase", "message", "category", "pid", "argv", "path", "bytes", "type", "traceback", "loss", "update_of",
        "status", "exit_code", "event", "root_cause_rank", "total_batches")


def number(rng: random.Random) -> object:
    pick = rng.randrange(6)
    if pick == 0:
        return rng.getrandbits(rng.choice((8, 53, 64, 65, 200, 1000))) * rng.choice((1, -1))
    if pick == 1:
        return rng.choice((1e300, -1e300, 1e30, 1e20, 5e-324, 1.7e308, float("nan"), float("inf"), -0.0))
    if pick == 2:
        return rng.uniform(-1e6, 1e6)
    return rng.choice((0, -1, 1, 2 ** 53, 2 ** 63, -(2 ** 63) - 1, True, False))


def value(rng: random.Random, depth: int = 0) -> object:
    pick = rng.randrange(9 if depth < 4 else 6)
    if pick <= 1:
        return number(rng)
    if pick == 2:
        return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.choice((0, 3, 40))))
    if pick == 3:
        return "k" * (rng.choice((300, 300, 5000)) if rng.random() < 0.99 else 70000)
    if pick == 4:
        return rng.choice((None, "nan", "inf", "-inf", ""))
    if pick == 5:
        return rng.choice(KEYS)
    if pick == 6:
        return [value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice((*KEYS, "x" * 5000)): value(rng, depth + 1) for _ in range(rng.randrange(5))}


def hostile(rng: random.Random) -> bytes:
    pick = rng.randrange(10)
    if pick == 0:  # bytes that are not UTF-8, or not JSON
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60)))
        junk = junk.replace(b"\n", b"").replace(b"\r", b"")  # a \r line is logged as its last part, as any
        return b"@tlog " + rng.choice((junk, b"{" + junk, b'{"loss": "\xff\xfe"}'))
    if pick == 1 and rng.random() < 0.2:  # nesting past any parser's limit
        depth = rng.choice((100, 1100, 20000))
        return b"@tlog " + rng.choice((b"[" * depth, b'{"data":' * depth + b"1" + b"}" * depth))
    if pick == 2:  # a supervisor-only kind trying to change the verdict
        kind = rng.choice(("attempt", "system", "restart", "error"))
        data = {"event": "exit", "status": "failed", "exit_code": 1, "attempt": 1, "next": "restart",
                "root_cause_rank": rng.choice((0, 3, "x", [])), "category": rng.choice(("system", {}, 5))}
        return b"@tlog " + json.dumps({"kind": kind, "data": data}).encode()
    obj = {rng.choice(KEYS): value(rng) for _ in range(rng.randrange(1, 6))}
    if pick < 7:
        obj["kind"] = rng.choice(FORGED)
        obj["data"] = rng.choice((value(rng), {rng.choice(KEYS): value(rng) for _ in range(4)}))
    text = json.dumps(obj, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    return rng.choice((b"@tlog ", b"\x1e@tlog ", b"partial \x1e@tlog ")) + text


# the lines that ended runs before (issue 15), sent first, whatever the seed
KNOWN = tuple(b"@tlog " + json.dumps(e).encode() for e in (
    {"kind": "metrics", "t": 1e20, "data": {"loss": 1.0}},
    {"kind": "metrics", "step": 1e300, "epoch": 1e30, "rank": 10 ** 30, "data": {"loss": 1.0}},
    {"kind": "warning", "data": {"message": {"a": 1}, "category": {"b": [2]}}},
    {"kind": "metrics", "step": 1, "data": {"k" * 5000: 1.0}},
    {"kind": "config", "data": {"seed": 1 << 64}},
))


def main() -> None:
    count, seed = int(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    out = sys.stdout.buffer
    out.write(b"\n".join(KNOWN) + b"\n")
    for i in range(count):
        if i % 100 == 0:
            out.write(f"own {i}\n".encode())
            out.flush()
            tlog.log({"good": float(i)}, step=i)
        out.write(hostile(rng) + b"\n")
    out.write(f"done {count}\n".encode())
    out.flush()


if __name__ == "__main__":
    main()
