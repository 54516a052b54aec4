"""The wire: the one contract between a training process and the supervisor.

An event is one line on the child's stdout::

    @tlog {"kind": "metrics", "step": 120, "data": {"loss": 0.53}}

The marker ``@tlog `` starts the line, or follows an ASCII record separator
(``\\x1e``) anywhere in it: the hook always writes ``\\x1e@tlog ...`` so that an
event emitted after a partial line of the script's own output (a ``print(...,
end="")``) is still found and the partial output is kept intact.  A shell
script can simply ``echo '@tlog {"loss": 0.5}'``.

Schema of the JSON object (every key but ``kind``/``data`` optional):

``kind``    metrics | phase | config | checkpoint | crash | meta | warning | error
            (child) — system | attempt | error | restart (supervisor; refused from the child).
``t``       wall time, seconds since the epoch (the supervisor stamps it if absent).
``step``    global step; ``epoch``, ``batch``: position in the loop.
``rank``    distributed rank (``local_rank``, ``world_size`` likewise).
``attempt`` restart attempt, stamped by the supervisor.
``src``     "auto" for values the probe captured (explicit values win over them).
``data``    the payload (an object).
``steps``   metrics only: the earlier steps of the window the event closes, as columns (see ``step_rows``).

A JSON object with neither ``kind`` nor ``data`` is a bare metrics event: its
``t``/``step``/``epoch``/``batch``/``rank`` keys are lifted out and the rest is
the payload.  Non-finite numbers travel as the strings "nan", "inf", "-inf".
``decode`` validates (see there): a line it refuses is kept as output.

The contract has three parts, all here: the environment a run gives its training process (the ``ENV_*``
names; every ``TLOG_*`` variable tlog reads or sets is declared in this module), the event kinds and the fields
the supervisor reads of each (``_FIELDS``), and ``VERSION``, which the hook's first event carries (``hello``)
and the supervisor compares with its own (``mismatch``).

This module is imported by the child: standard library (and orjson) only.
"""

from __future__ import annotations

import json as _json
import math
import os
import time
from collections.abc import Callable
from typing import Any

# The version of this contract.  Bump it when an event kind, a field the supervisor reads or an ENV_* name
# changes meaning: a training process that imports another tlog (its own venv's) is then told apart.
VERSION = 1

ENV_PREFIX = "TLOG_"
# What ``tlog run`` sets for its training process (``RUN_ENV``; a nested run starts without the outer's).
ENV_SUPERVISED = "TLOG_SUPERVISED"  # "1": this process belongs to a supervised run, its events go to stdout
ENV_SUPERVISOR_PID = "TLOG_SUPERVISOR_PID"  # the supervisor the hook's lifeline watches
ENV_WIRE = "TLOG_WIRE"  # the identity of the stdout that carries the events (set by the first hooked process)
ENV_PKG_DIR = "TLOG_PKG_DIR"  # where the boot sitecustomize finds tlog (also hook/boot/sitecustomize.py's)
ENV_EXPERIMENT = "TLOG_EXPERIMENT"  # the experiment's name ...
ENV_EXP_DIR = "TLOG_EXP_DIR"  # ... and directory
ENV_ATTEMPT = "TLOG_ATTEMPT"  # the restart attempt, from 1
ENV_NO_INSTRUMENT = "TLOG_NO_INSTRUMENT"  # "1": no probes (--no-instrument)
ENV_LOG_EVERY = "TLOG_LOG_EVERY"  # the probe's report interval in steps (--log-every)
ENV_GRAD_NORM = "TLOG_GRAD_NORM"  # every how many steps the gradient norm is read (--grad-norm)
ENV_STACK_SIGNAL = "TLOG_STACK_SIGNAL"  # the signal that makes the hook dump its stacks (hang detection)
ENV_LIVE = "TLOG_LIVE"  # the live page (hook/live.py)
ENV_RESUME_CHECKPOINT = "TLOG_RESUME_CHECKPOINT"  # a restart's checkpoint ...
ENV_RESUME_STEP = "TLOG_RESUME_STEP"  # ... its step ...
ENV_RESUME_EPOCH = "TLOG_RESUME_EPOCH"  # ... and epoch
RUN_ENV = frozenset({ENV_SUPERVISED, ENV_SUPERVISOR_PID, ENV_WIRE, ENV_PKG_DIR, ENV_EXPERIMENT, ENV_EXP_DIR,
                     ENV_ATTEMPT, ENV_NO_INSTRUMENT, ENV_LOG_EVERY, ENV_GRAD_NORM, ENV_STACK_SIGNAL, ENV_LIVE,
                     ENV_RESUME_CHECKPOINT, ENV_RESUME_STEP, ENV_RESUME_EPOCH})
# What the user sets.
ENV_DISABLE = "TLOG_DISABLE"  # "1": the hook does nothing at all (also hook/boot/sitecustomize.py's)
ENV_LOG_DIR = "TLOG_LOG_DIR"  # the log dir (--log-dir), for every command and the in-script API
ENV_NAME = "TLOG_NAME"  # the experiment's name for the in-script API without a supervisor
ENV_CONFIG = "TLOG_CONFIG"  # a tlog.toml to read instead of searching upward
ENV_DEBUG = "TLOG_DEBUG"  # tracebacks of tlog's internal errors
ENV_NOTIFY_TIMEOUT_S = "TLOG_NOTIFY_TIMEOUT_S"  # how long a notifier may take
ENV_HANG_FLOOR_S = "TLOG_HANG_FLOOR_S"  # the hang limit's floor (tests, very fast loops)
# What a --notify command finds in its environment: the outcome's fields.
NOTIFY_ENV = {field: ENV_PREFIX + field.upper()
              for field in ("status", "experiment", "category", "cause", "remedy", "step", "exit_code", "dir")}


def _stdlib_dumps(obj: Any) -> bytes:
    """As orjson would: integers beyond 64 bits refused (orjson would read them back as rounded floats)."""
    _check_ints(obj, 0)
    return _json.dumps(obj, separators=(",", ":"), default=_default, allow_nan=False).encode()


def _check_ints(value: Any, depth: int) -> None:
    if isinstance(value, int) and not -MAX_INT <= value < MAX_INT:
        raise TypeError("Integer exceeds 64-bit range")
    if depth < MAX_DEPTH:
        if isinstance(value, dict):
            for item in value.values():
                _check_ints(item, depth + 1)
        elif isinstance(value, (list, tuple)):
            for item in value:
                _check_ints(item, depth + 1)


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

    dumps, loads, JSONDecodeError = fast_dumps, orjson.loads, orjson.JSONDecodeError  # type: ignore[assignment]


MARKER = b"@tlog "
SEP = b"\x1e"
EMIT_PREFIX = SEP + MARKER

# ``error`` is both: the seed API's handled errors come from the child, failures from the supervisor.
CHILD_KINDS = frozenset({"metrics", "phase", "config", "checkpoint", "crash", "meta", "warning", "error"})
SUPERVISOR_KINDS = frozenset({"system", "attempt", "error", "restart"})
KINDS = CHILD_KINDS | SUPERVISOR_KINDS
CONTEXT_KEYS = ("t", "step", "epoch", "batch", "rank", "local_rank", "world_size", "attempt", "src")
_POSITION_KEYS = ("step", "epoch", "batch", "rank", "local_rank", "world_size")  # "attempt" is the supervisor's
MAX_POSITION = 1 << 53
MAX_INT = 1 << 63
MIN_T, MAX_T = 1e9, 1 << 33  # seconds since the epoch: 2001 to 2242
MAX_KEY = 200  # characters of a key (metric names included) or a metric's string value
MAX_STR = 1 << 16  # characters of a string in a payload (a traceback)
MAX_DEPTH = 16
MAX_METRICS = 1000
MAX_STEPS = 1 << 16  # rows of one window's ``steps`` columns (the probe reports at least every 10,000 steps)
_STR, _INT = (str,), (int,)
_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {  # what the supervisor reads of each child kind
    "phase": {"phase": _STR, "total_batches": _INT, "total_epochs": _INT},
    "checkpoint": {"path": _STR, "bytes": _INT, "epoch_complete": (bool,)},
    "crash": {"type": _STR, "message": _STR, "traceback": _STR, "phase": _STR, "category": _STR},
    "warning": {"message": _STR, "category": _STR},
    "error": {"category": _STR, "phase": _STR, "error_message": _STR, "error_type": _STR, "traceback": _STR,
              "update_of": _STR, "id": _STR, "root_cause_rank": _INT, "peer_lost": (bool,)},
    "meta": {"pid": _INT, "argv": (list,), "host": _STR, "restart_count": _INT, "launcher": _STR,
             "launcher_pid": _INT, "cwd": _STR, "supervisor_pid": _INT, "protocol": _INT, "tlog": _STR,
             "tlog_dir": _STR},
}
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


def wire_safe(value: Any, depth: int = 0, big: Callable[[int], Any] = str) -> Any:
    """A copy of ``value`` every encoder takes: for a payload ``dumps`` refused (the emitter's fallback).

    Integers beyond 64 bits become ``big`` of them: their decimal text (a seed stays exact), or ``float``
    for metrics, which must stay numbers; non-finite floats the markers,
    keys text, other objects what ``_default`` makes of them; what still cannot be made JSON (a broken
    ``__str__``, nesting past 16) is dropped: None in a list, the key left out of a dict.
    """
    cls = value.__class__
    if value is None or cls is bool or cls is str:
        return value
    if cls is int or isinstance(value, int):
        value = int(value)
        return value if -MAX_INT <= value < MAX_INT else big(value)
    if isinstance(value, float):
        return finite(float(value))
    if depth >= MAX_DEPTH:
        return _DROP
    if isinstance(value, dict):
        out = {}
        for key, item in list(value.items()):
            item = wire_safe(item, depth + 1, big)
            if item is not _DROP and (key := _key_text(key)) is not None:
                out[key] = item
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        return [None if item is _DROP else item for item in (wire_safe(v, depth + 1, big) for v in list(value))]
    try:
        converted = _default(value)
    except Exception:  # noqa: BLE001 - a broken __str__: the field goes
        return _DROP
    return _DROP if converted is value else wire_safe(converted, depth + 1, big)


_DROP = object()


def _key_text(key: Any) -> str | None:
    """A dict key as JSON text (orjson takes only str keys): NaN as "nan", the rest by str()."""
    if key.__class__ is str:
        return key
    if isinstance(key, float):
        return str(finite(key))
    try:
        return str(key)
    except Exception:  # noqa: BLE001 - a broken __str__: the entry goes
        return None


if os.environ.get(ENV_SUPERVISED) != "1":
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


def hello(data: dict[str, Any]) -> dict[str, Any]:
    """The payload of a hooked process's first event (a ``meta``): ``data`` with this contract's version and
    where this tlog is installed, so a supervisor can tell a training process that imports another tlog."""
    return {**data, "protocol": VERSION, "tlog_dir": os.path.dirname(os.path.abspath(__file__))}


def mismatch(event: dict[str, Any]) -> str | None:
    """The one line to tell the user when a hooked process speaks another version of this contract, else None.

    Only a hello is judged: a ``meta`` with the process's ``pid`` (or a launcher's ``launcher_pid``); a tlog from
    before versioning sends one without ``protocol``.  The events still count: what this version can read of
    them is recorded, what it refuses is kept as output."""
    if event["kind"] != "meta":
        return None
    data = event["data"]
    version = data.get("protocol")
    if version == VERSION or ("pid" not in data and "launcher_pid" not in data):
        return None
    where = data.get("tlog_dir")
    theirs = "no protocol version (an older tlog)" if version is None else f"protocol version {version}"
    return (f"the training process imports {f'the tlog at {where}' if where else 'another tlog'} ({theirs}), "
            f"this tlog speaks version {VERSION}: its events are recorded as far as this version reads them; "
            "install the same tlog in the script's environment")


def find_marker(line: bytes) -> int:
    """Index where an event starts in ``line`` (after any partial output), or -1.

    The last separator wins: the hook writes each event whole (one write of at most PIPE_BUF) from its
    separator to its newline, so an event that lands inside a line the script was still writing (its
    stdout flushed mid-line, a ``@tlog`` line of its own, a progress bar) runs from there to the end."""
    i = line.rfind(EMIT_PREFIX)
    if i >= 0:
        return i + 1
    return 0 if line.startswith(MARKER) else -1


def decode(payload: bytes, now: float | None = None) -> dict:
    """Parse and validate the JSON after the marker into a normalised event (raises WireError, nothing else).

    This is the boundary: what it returns is typed as declared (positions are ints in range, ``t`` a plausible
    wall time, the fields the supervisor reads of each kind have their types, strings and keys are bounded),
    so nothing the child sends can raise further on or pass for the supervisor's own events.
    """
    try:
        obj = loads(payload)
    except Exception as exc:  # noqa: BLE001 - JSON errors, invalid UTF-8, nesting past the parser's limit
        raise WireError(f"not JSON: {exc!r}"[:200]) from None
    if obj.__class__ is not dict:
        raise WireError("an event must be a JSON object")
    if "kind" in obj or "data" in obj:
        kind = obj.get("kind", "metrics")
        if kind.__class__ is not str or kind not in CHILD_KINDS:
            raise WireError(f"unknown event kind {str(kind)[:40]!r}")
        data = obj.get("data")
        if data is None:
            data = {}
        elif data.__class__ is not dict:
            raise WireError("'data' must be a JSON object")
    else:
        kind, data = "metrics", obj
        obj = {key: data.pop(key) for key in CONTEXT_KEYS if key in data}
    event: dict[str, Any] = {"kind": kind}
    for key in _POSITION_KEYS:
        value = obj.get(key)
        if value is not None:
            event[key] = _position(key, value)
    src = obj.get("src")
    if src is not None:
        if src.__class__ is not str:
            raise WireError("'src' must be a string")
        event["src"] = src[:MAX_KEY]
    t = obj.get("t")
    if t is None or t.__class__ is str:
        t = time.time() if now is None else now
    elif t.__class__ not in (float, int) or not MIN_T <= t < MAX_T:
        raise WireError("'t' must be a wall time in seconds since the epoch")
    event["t"] = t
    event["data"] = _metrics(data) if kind == "metrics" else _payload(kind, data)
    steps = obj.get("steps")
    if steps is not None and kind == "metrics":
        event["steps"] = _steps(steps)
    return event


def _position(key: str, value: Any) -> int:
    if value.__class__ is float and value.is_integer():
        value = int(value)
    if value.__class__ is not int or not -1 <= value < MAX_POSITION:
        raise WireError(f"{key!r} must be an integer in [-1, 2**53), got {str(value)[:40]}")
    return value


def _metrics(data: dict) -> dict:
    """Metric values are scalars: numbers in range, non-finite markers, short strings, None."""
    if len(data) > MAX_METRICS:
        raise WireError(f"more than {MAX_METRICS} metrics in one event")
    clean = {}
    for key, value in data.items():
        cls = value.__class__
        if cls is float:
            if value - value != 0:
                value = finite(value)
        elif cls is int:
            if not -MAX_INT <= value < MAX_INT:
                value = float(value)
                if value - value != 0:
                    raise WireError(f"metric {key[:40]!r} is out of range")
        elif cls is str:
            value = value[:MAX_KEY]
        elif cls is bool:
            value = int(value)
        elif value is not None:
            raise WireError(f"metric {key[:40]!r} must be a number, got {cls.__name__}")
        clean[key[:MAX_KEY]] = value
    return clean


def _steps(steps: Any) -> dict[str, list]:
    """A window's columns: ``step`` (integers) and per metric a list of the same length of numbers, non-finite
    markers or null; ``batch`` integers or null.  Bounded in rows and names; anything else is refused whole."""
    if steps.__class__ is not dict or len(steps) > MAX_METRICS:
        raise WireError("'steps' must be an object of at most 1000 columns")
    rows = steps.get("step")
    if rows.__class__ is not list or not 0 < len(rows) <= MAX_STEPS:
        raise WireError(f"'steps' needs a 'step' list of 1 to {MAX_STEPS} integers")
    n = len(rows)
    clean: dict[str, list] = {}
    for key, column in steps.items():
        if key.__class__ is not str or column.__class__ is not list or len(column) != n:
            raise WireError(f"'steps' column {str(key)[:40]!r} must be a list as long as 'step'")
        if key in ("step", "batch"):
            for value in column:
                if not (value is None and key == "batch") and (
                        value.__class__ is not int or not -1 <= value < MAX_POSITION):
                    raise WireError(f"'steps' column {key!r} must hold integers in [-1, 2**53)")
            clean[key] = column
            continue
        for i, value in enumerate(column):
            cls = value.__class__
            if cls is float:
                if value - value != 0:
                    column[i] = finite(value)
            elif cls is int:
                if not -MAX_INT <= value < MAX_INT:
                    raise WireError(f"'steps' column {key[:40]!r} holds an integer out of range")
            elif cls is str:
                if value not in _NONFINITE:
                    raise WireError(f"'steps' column {key[:40]!r} must hold numbers or null")
            elif value is not None:
                raise WireError(f"'steps' column {key[:40]!r} must hold numbers or null")
        clean[key[:MAX_KEY]] = column
    return clean


def step_rows(event: dict) -> list[dict]:
    """The per-step metrics events a window event stands for, in order: one per row of its ``steps`` columns
    (values that are null left out), then the event itself without them.

    Why columns: the probe keeps every step's values and sends them once per report window, so the wire and
    events.jsonl carry one line per window, not one per step.  Rows share the event's time, epoch and source.
    """
    steps = event.get("steps")
    if steps is None:
        return [event]
    base = {key: value for key, value in event.items() if key not in ("steps", "data", "step", "batch")}
    names = [key for key in steps if key not in ("step", "batch")]
    batches = steps.get("batch")
    out = []
    for i, step in enumerate(steps["step"]):
        row = {**base, "step": step}
        if batches is not None and batches[i] is not None:
            row["batch"] = batches[i]
        row["data"] = {name: steps[name][i] for name in names if steps[name][i] is not None}
        out.append(row)
    last = {key: value for key, value in event.items() if key != "steps"}
    out.append(last)
    return out


def _payload(kind: str, data: dict) -> dict:
    """Any JSON payload, bounded; the fields the supervisor reads must have their declared types."""
    clean = _bounded(data, 0)
    for key, types in _FIELDS.get(kind, {}).items():
        value = clean.get(key)
        if value is not None and value.__class__ not in types:
            raise WireError(f"{kind} field {key!r} must be {' or '.join(t.__name__ for t in types)}")
    if kind == "meta" and clean.get("argv") is not None and any(a.__class__ is not str for a in clean["argv"]):
        raise WireError("meta field 'argv' must be a list of strings")
    return clean


def _bounded(value: Any, depth: int) -> Any:
    cls = value.__class__
    if cls is str:
        return value[:MAX_STR]
    if cls is dict:
        if depth >= MAX_DEPTH:
            raise WireError("payload nested too deep")
        return {key[:MAX_KEY]: _bounded(item, depth + 1) for key, item in value.items()}
    if cls is list:
        if depth >= MAX_DEPTH:
            raise WireError("payload nested too deep")
        return [_bounded(item, depth + 1) for item in value]
    if cls is float:
        return value if value - value == 0 else finite(value)
    if cls is int and not -MAX_INT <= value < MAX_INT:
        raise WireError("an integer out of the 64-bit range")
    return value
