"""Where the child's events go: the supervisor's pipe, or (with no supervisor) the store.

Runs inside the training process, so it is stdlib-only and the path of
``tlog.log()`` is a few attribute reads, one ``dumps`` and an append.
Every event but a script's own metrics is written at once (the probe's
reports, crashes, phases, warnings), after the metrics lines still held.
A script's metrics lines are held and written together: when ``HOLD_LINES``
are held, at the next other event, at exit or a termination signal, and by a
flusher thread ``HOLD_S`` after the first held line (so a script that then
blocks still delivers them); a write per call is most of its cost.  A SIGKILL
loses at most the calls of the last ``HOLD_S``.  In a run the torch probe
reports for, a ``tlog.log`` call is held earlier still (an append, no
encoding) and sent with the probe's next report, its values in the window's
per-step columns, so a value logged at a step shares that step's row and a
device tensor is read with the window, never on its own.  A SIGKILL then
loses what the probe's window loses: the steps since the last report.
"""

from __future__ import annotations

import _thread
import atexit
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from tlog import protocol

MAX_DEFERRED = 10_000  # held tlog.log calls before they are sent anyway (one device sync per this many)
MAX_DEFERRED_S = 5.0  # ... or once the oldest has waited this long
HOLD_LINES = 256  # a script's metrics lines held before they are written together (about 30 KB, in one write)
HOLD_S = 0.1  # ... or once the first of them has waited this long (the SIGKILL bound of a run without the probe)
LOCK_S = 1.0  # the longest a flush waits for another thread's write of held lines


def _context_from_env() -> dict[str, int]:
    """Rank information torchrun and friends put in the environment."""
    ctx = {}
    for key, env in (("rank", "RANK"), ("local_rank", "LOCAL_RANK"), ("world_size", "WORLD_SIZE")):
        value = os.environ.get(env)
        if value is not None and value.isdigit():
            ctx[key] = int(value)
    return ctx


class Emitter:
    """Base: keeps the loop position the probe updates, and stamps it on events.

    ``step``/``epoch``/``batch``/``phase`` are plain attributes so the probe can
    update them with a store, not a call.
    """

    def __init__(self) -> None:
        self.step: int | None = None
        self.epoch: int | None = None
        self.batch: int | None = None
        self.phase: str | None = None
        self.enabled = True
        self.crashed = False
        self.context = _context_from_env()
        self.hold = False  # set by the torch probe, which then takes the held calls at each report
        self.locate: Callable[[], None] | None = None  # the torch probe's: brings ``batch`` up to date
        self.deferred: list[tuple[dict, int | None, int | None, int | None, str | None]] = []
        self._deferred_since = 0.0
        self._warned: set[str] = set()

    def emit(self, kind: str, data: dict, **context: Any) -> None:
        """Send one event; never raises into the caller's training loop."""
        if not self.enabled:
            return
        try:
            self._send(kind, data, context)
        except OSError as exc:  # the pipe (or the store) is gone: nothing more can be delivered
            self._off(exc)
        except Exception as exc:  # noqa: BLE001 - a value the encoder refused: convert, never switch off for it
            self._send_converted(kind, data, context, exc)

    def _send_converted(self, kind: str, data: dict, context: dict, exc: Exception) -> None:
        """The event again with its values made wire-safe (huge ints as text, odd objects and keys converted,
        the unconvertible dropped); one warning per kind says so."""
        try:
            big = float if kind == "metrics" else str
            self._send(kind, protocol.wire_safe(data, big=big), protocol.wire_safe(context))
        except OSError as err:
            self._off(err)
            return
        except Exception as err:  # noqa: BLE001 - not even that: this event is lost, delivery is not
            self.warn_once(f"encode-lost-{kind}", f"tlog: a {kind} event could not be encoded and was dropped: "
                           f"{err!r}"[:300])
            return
        self.warn_once(f"encode-{kind}", f"tlog: values of a {kind} event JSON cannot hold were converted "
                       f"({exc!r})"[:300])

    def _off(self, exc: Exception) -> None:
        self.enabled = False
        self._complain("emit", f"tlog: event delivery failed and is now off: {exc!r}")

    def metrics(self, data: dict, step: int | None, epoch: int | None, batch: int | None,
                src: str | None = None) -> None:
        """The hot path of ``tlog.log``: one metrics event at the current loop position (held for the probe's
        next report while it runs)."""
        if self.hold:
            self._defer(data, step, epoch, batch, src)
            return
        self.send_metrics(data, step, epoch, batch, src)

    def send_metrics(self, data: dict, step: int | None, epoch: int | None, batch: int | None,
                     src: str | None = None, steps: dict | None = None) -> None:
        """One metrics event now (``steps``: a window's earlier rows, see ``protocol.step_rows``)."""
        if not self.enabled:
            return
        clean = {}
        for key, value in data.items():
            cls = value.__class__
            if cls is float:
                clean[key] = value if value - value == 0 else protocol.finite(value)
            elif cls is int or cls is str or value is None:
                clean[key] = value
            else:
                clean[key] = _scalar(value)
        self.emit("metrics", clean,
                  step=self.step if step is None else step,
                  epoch=self.epoch if epoch is None else epoch,
                  batch=self.batch if batch is None else batch, src=src, steps=steps)

    def _defer(self, data: dict, step: int | None, epoch: int | None, batch: int | None, src: str | None) -> None:
        """Hold a call, at its loop position, until the next report (device tensors detached, read then)."""
        deferred = self.deferred
        for value in data.values():
            if value.__class__ is not float and getattr(value, "is_cpu", True) is False:
                data = {k: v.detach() if getattr(v, "is_cpu", True) is False else v for k, v in data.items()}
                break
        else:
            data = dict(data)  # the caller may reuse its dict
        if not deferred:
            self._deferred_since = time.monotonic()
        elif len(deferred) >= MAX_DEFERRED or time.monotonic() - self._deferred_since > MAX_DEFERRED_S:
            self.flush_deferred()  # no report came (a loop without steps): send them anyway, rarely
            self._deferred_since = time.monotonic()
        self.deferred.append((data, self.step if step is None else step, self.epoch if epoch is None else epoch,
                              self.batch if batch is None else batch, src))

    def take_deferred(self) -> tuple[list, list[Any]]:
        """The held-back calls and their device tensors, for a caller that reads those with its own (the probe's
        report: one transfer for everything); hand both back to ``emit_deferred`` with the values."""
        held, self.deferred = self.deferred, []
        return held, [v for data, *_ in held for v in data.values() if getattr(v, "is_cpu", True) is False]

    @staticmethod
    def resolve_deferred(held: list, values: list[float]) -> list:
        """The held calls with each device tensor replaced by its value (in ``take_deferred`` order)."""
        if not values:
            return held
        read = iter(values)
        return [({k: next(read) if getattr(v, "is_cpu", True) is False else v for k, v in data.items()}, *pos)
                for data, *pos in held]

    def emit_deferred(self, held: list, values: list[float]) -> None:
        """Emit held-back calls in order, each device tensor replaced by its value."""
        for call in self.resolve_deferred(held, values):
            self.send_metrics(*call)

    def flush_deferred(self) -> None:
        """Emit the held-back calls now, their device values read together (one sync), and write any held
        line (exit, a termination signal)."""
        if self.deferred:
            held, tensors = self.take_deferred()
            try:
                self.emit_deferred(held, read_scalars(tensors))
            except Exception as exc:  # noqa: BLE001 - a device gone bad: the values are lost, the run is not
                self.warn_once("deferred", f"tlog: could not read logged device tensors: {exc!r}", "probe")
        self.flush_lines()  # the calls just sent are script metrics lines, held too: at exit nothing else writes them

    def warn(self, message: str, category: str = "system") -> None:
        """A warning event (NaN loss, a probe switching itself off, ...)."""
        self.emit("warning", {"message": message, "category": category},
                  step=self.step, epoch=self.epoch, batch=self.batch)

    def warn_once(self, key: str, message: str, category: str = "system") -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        self.warn(message, category)

    def _complain(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            try:
                sys.stderr.write(message + "\n")
            except Exception:  # noqa: BLE001 - stderr itself may be gone at shutdown
                pass

    def _send(self, kind: str, data: dict, context: dict) -> None:
        raise NotImplementedError

    def flush_lines(self) -> None:
        """Write what is encoded but held (nothing to do where events are not held)."""

    def close(self, status: str | None = None) -> None:
        """Called at interpreter exit; the wire needs nothing, the store finalises."""


def _atomic_write_size(fd: int) -> int:
    """The largest write the pipe keeps whole beside other writers (PIPE_BUF; 512 is POSIX's least)."""
    try:
        return os.fpathconf(fd, "PC_PIPE_BUF")
    except (OSError, ValueError):
        return 512


class WireEmitter(Emitter):
    """Writes ``\\x1e@tlog {...}`` lines to a private duplicate of stdout.

    A private fd keeps events flowing when the script rebinds ``sys.stdout`` or
    redirects fd 1; it is the same pipe, so ordering with the script's own
    output is preserved.
    """

    def __init__(self, fd: int = 1) -> None:
        super().__init__()
        self._fd = os.dup(fd)
        self._held: deque[bytes] = deque()
        self._atomic = _atomic_write_size(self._fd)
        self._lock = _thread.allocate_lock()
        self._writer: int | None = None  # the thread writing under the lock
        self._wakeup: _thread.LockType | None = None
        os.register_at_fork(after_in_child=self._forked)
        self.metrics = self._first_metrics  # type: ignore[method-assign]  # one call, then the class's own

    def _first_metrics(self, *args: Any, **kwargs: Any) -> None:
        """The first metrics event binds the fast encoder (deferred from start-up: see protocol.use_orjson)."""
        del self.metrics
        protocol.use_orjson()
        self.metrics(*args, **kwargs)

    def _forked(self) -> None:
        """A forked DataLoader worker must not report as if it were the trainer."""
        self.enabled = False
        self._held.clear()  # the parent's to write

    def _send(self, kind: str, data: dict, context: dict) -> None:
        if self.context:
            context = {**self.context, **context}
        line = protocol.encode(kind, data, **context)
        held = self._held
        if kind == "metrics" and context.get("src") != "auto":  # the script's own: held (see the module doc)
            held.append(line)
            n = len(held)
            if n == 1:
                self._wake()
            elif n >= HOLD_LINES:
                self.flush_lines()
            return
        held.append(line)
        self.flush_lines()

    def flush_lines(self) -> None:
        """Write the held lines, in order, whole lines at most ``PIPE_BUF`` bytes a write
        (``_atomic``).

        Under a lock: the flusher thread writes too, and a line written beside one of its writes could
        overtake it.  The bound keeps each write atomic on the pipe: the flusher writes while the script's
        own thread may be flushing its stdout into the same pipe, and a larger write can be split by the
        kernel around the script's bytes, cutting an event line in two (lost)."""
        held = self._held
        me = _thread.get_ident()
        if not held or self._writer == me:
            return  # a signal handler (termination) interrupting this thread's own write: that write goes on
        if not self._lock.acquire(timeout=LOCK_S):  # never hang a handler that came in before _writer was set
            return
        try:
            self._writer = me
            chunk: list[bytes] = []
            size = 0
            while held:
                line = held.popleft()
                if size + len(line) > self._atomic and chunk:
                    self._write(b"".join(chunk))
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            self._write(b"".join(chunk))
        finally:
            self._writer = None
            self._lock.release()

    def _write(self, data: bytes) -> None:
        fd = self._fd
        while data:
            data = data[os.write(fd, data):]

    def _wake(self) -> None:
        """The first held line: the flusher writes it within HOLD_S (started here once, with the exit hook)."""
        if self._wakeup is None:
            self._wakeup = _thread.allocate_lock()
            self._wakeup.acquire()
            atexit.register(self._flush_quietly)
            _thread.start_new_thread(self._flusher, ())
        try:
            self._wakeup.release()
        except RuntimeError:  # already released: the flusher has not woken yet, it will write this line too
            pass

    def _flusher(self) -> None:
        wakeup = self._wakeup
        assert wakeup is not None
        while self.enabled:
            wakeup.acquire()
            while self._held and self.enabled:
                time.sleep(HOLD_S)
                self._flush_quietly()

    def _flush_quietly(self) -> None:
        try:
            self.flush_lines()
        except OSError as exc:  # the pipe is gone: nothing more can be delivered
            self._off(exc)


class StoreEmitter(Emitter):
    """No supervisor: the script writes its own experiment directory through the store."""

    def __init__(self, exp_dir: str) -> None:
        super().__init__()
        from tlog.store.writer import ExperimentWriter

        self.writer = ExperimentWriter(exp_dir)
        self.exp_dir = exp_dir
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self.enabled = False

    def _send(self, kind: str, data: dict, context: dict) -> None:
        event = {"kind": kind, "t": time.time()}
        event.update(self.context)
        for key, value in context.items():
            if value is not None:
                event[key] = value
        event["data"] = protocol.loads(protocol.dumps(data)) if _needs_roundtrip(data) else data
        self.writer.write_events([event])

    def close(self, status: str | None = None) -> None:
        if self.enabled:
            self.writer.close(status or "finished")
            self.enabled = False


def _needs_roundtrip(data: dict) -> bool:
    """Crash/meta payloads may hold objects JSON cannot take; metrics never do after cleaning."""
    return any(not isinstance(v, (int, float, str, type(None))) for v in data.values())


def read_scalars(tensors: list[Any]) -> list[float]:
    """Python numbers of one-element tensors, read with one transfer (a single sync for device tensors).

    Imports torch lazily: only the probe, or a caller that holds tensors, gets here.
    """
    if not tensors:
        return []
    import torch

    try:
        return torch.stack([t if t.dim() == 0 else t.reshape(()) for t in tensors]).tolist()
    except (RuntimeError, TypeError):  # mixed devices or shapes: one read each, still correct
        return [t.item() for t in tensors]


def _scalar(value: Any) -> Any:
    """A tensor, numpy scalar or bool as a wire number (reading a tensor is the caller's sync)."""
    if isinstance(value, bool):
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if number - number == 0 else protocol.finite(number)
