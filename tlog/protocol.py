"""The wire: the one contract between a training process and the supervisor.

An event is one line on the child's stdout::

    @tlog {"kind": "metrics", "step": 120, "data": {"loss": 0.53}}

The marker ``@tlog `` starts the line, or follows an ASCII record separator
(``\\x1e``) anywhere in it: the hook always writes ``\\x1e@tlog ...`` so that an
event emitted after a partial line of the script's own output (a ``print(...,
end="")``) is still found and the partial output is kept intact.  A shell
script can simply ``echo '@tlog {"loss": 0.5}'``.

Schema of the JSON object (every key but ``kind``/``data`` optional):

``kind``    metrics | phase | config | checkpoint | crash | meta | warning
            (child) — system | attempt | error | restart (supervisor).
``t``       wall time, seconds since the epoch (the supervisor stamps it if absent).
``step``    global step; ``epoch``, ``batch``: position in the loop.
``rank``    distributed rank (``local_rank``, ``world_size`` likewise).
``attempt`` restart attempt, stamped by the supervisor.
``src``     "auto" for values the probe captured (explicit values win over them).
``data``    the payload (an object).

A JSON object with neither ``kind`` nor ``data`` is a bare metrics event: its
``t``/``step``/``epoch``/``batch``/``rank`` keys are lifted out and the rest is
the payload.  Non-finite numbers travel as the strings "nan", "inf", "-inf".

This module is imported by the child: standard library (and orjson) only.
"""

from __future__ import annotations

import json as _json
import math
import os
import time
from typing import Any


def _stdlib_dumps(obj: Any) -> bytes:
    return _json.dumps(obj, separators=(",", ":"), default=_default, allow_nan=False).encode()


dumps = _stdlib_dumps
loads = _json.loads
JSONDecodeError: type[Exception] = ValueError


def use_orjson() -> None:
    """Bind ``dumps``/``loads`` to orjson (~5x faster both ways) when it is installed.

    Done at import, except in a supervised child: there, importing orjson (which pulls in dataclasses, uuid,
    datetime: ~25 ms) would double the hook's start-up, so the hook calls this at its first metrics event or
    once torch is imported (which has loaded those modules already).  The stdlib fallback keeps foreign
    interpreters working.
    """
    global dumps, loads, JSONDecodeError
    try:
        import orjson
    except ImportError:  # pragma: no cover - exercised by interpreters without orjson
        return

    def fast_dumps(obj: Any) -> bytes:
        return orjson.dumps(obj, default=_default)

    dumps, loads, JSONDecodeError = fast_dumps, orjson.loads, orjson.JSONDecodeError


MARKER = b"@tlog "
SEP = b"\x1e"
EMIT_PREFIX = SEP + MARKER

CHILD_KINDS = frozenset({"metrics", "phase", "config", "checkpoint", "crash", "meta", "warning"})
SUPERVISOR_KINDS = frozenset({"system", "attempt", "error", "restart"})
KINDS = CHILD_KINDS | SUPERVISOR_KINDS
CONTEXT_KEYS = ("t", "step", "epoch", "batch", "rank", "local_rank", "world_size", "attempt", "src")
_INT_KEYS = frozenset({"step", "epoch", "batch", "rank", "local_rank", "world_size", "attempt"})
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf,
              "NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class WireError(ValueError):
    """A marked line that is not a valid event; the supervisor keeps it as output."""


def _default(obj: Any) -> Any:
    """Serialise what JSON cannot: tensors and numpy scalars via float(), the rest via str()."""
    item = getattr(obj, "item", None)
    if item is not None:
        try:
            return item()
        except Exception:  # noqa: BLE001 - a multi-element tensor: fall through to str
            pass
    return str(obj)


if os.environ.get("TLOG_SUPERVISED") != "1":
    use_orjson()


def finite(value: float) -> float | str:
    """Encode a float for the wire (JSON has no NaN or infinity)."""
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def number(value: Any) -> float | None:
    """Decode a metric value from the wire: a number, a non-finite marker, or None."""
    if value.__class__ is float or value.__class__ is int:
        return value
    if isinstance(value, str):
        return _NONFINITE.get(value)
    if isinstance(value, bool) or value is None:
        return None if value is None else float(value)
    return None


def encode(kind: str, data: dict, **context: Any) -> bytes:
    """One event line, marker and newline included, as the hook writes it."""
    event = {"kind": kind, "t": time.time()}
    for key, value in context.items():
        if value is not None:
            event[key] = value
    event["data"] = data
    return EMIT_PREFIX + dumps(event) + b"\n"


def find_marker(line: bytes) -> int:
    """Index where an event starts in ``line`` (after any partial output), or -1."""
    if line.startswith(MARKER):
        return 0
    i = line.find(EMIT_PREFIX)
    return -1 if i < 0 else i + 1


def decode(payload: bytes, now: float | None = None) -> dict:
    """Parse the JSON after the marker into a normalised event dict (raises WireError)."""
    try:
        obj = loads(payload)
    except (JSONDecodeError, ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"not JSON: {exc}") from None
    if obj.__class__ is not dict:
        raise WireError("an event must be a JSON object")
    if "kind" in obj or "data" in obj:
        kind = obj.get("kind", "metrics")
        if kind not in KINDS:
            raise WireError(f"unknown event kind {kind!r}")
        data = obj.get("data")
        if data is None:
            obj["data"] = data = {}
        elif data.__class__ is not dict:
            raise WireError("'data' must be a JSON object")
        obj["kind"] = kind
    else:
        obj = _lift_bare(obj)
    for key in _INT_KEYS.intersection(obj):
        value = obj[key]
        if value is not None and value.__class__ is not int:
            obj[key] = _as_int(key, value)
    t = obj.get("t")
    if t is None or t.__class__ not in (float, int):
        obj["t"] = time.time() if now is None else now
    return obj


def _lift_bare(obj: dict) -> dict:
    event = {"kind": "metrics"}
    for key in CONTEXT_KEYS:
        if key in obj:
            event[key] = obj.pop(key)
    event["data"] = obj
    return event


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise WireError(f"{key!r} must be an integer, got {value!r}")
