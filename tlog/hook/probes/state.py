"""The probe's state and its step accounting: what a step is, which loss belongs to it, when to report.

- A step is a step of the *primary* optimizer, the first one seen stepping
  (its count is the global step).  Other optimizers (a GAN's second one) are
  counted on their own.  While no optimizer exists at all, each backward is a
  step (loops that update ``p.data`` by hand).
- The loss of a step is the mean of the scalar losses backpropagated since the
  previous optimizer step (gradient accumulation), each pre-divided one
  (``loss / N`` over N micro-batches) on the script's scale (``accumulation``).  Inside an optimizer's
  ``step`` (a closure: LBFGS evaluates it many times) only the first
  evaluation counts, and only when the step had no loss before it: the loss
  at the parameters the step started from, the one LBFGS itself returns.
- With several optimizers, a due report waits for the primary's next step
  (or any pending-report point), so the other optimizers' steps of the same
  iteration (a GAN's generator after its discriminator) join its row.
- A loss on an accelerator stays there, detached, until a report reads the
  whole window at once: no device synchronisation between reports (see
  ``window``).

The hot path is two calls per training step, and no more: the backward
(``losses.patch_backward``) and torch's optimizer post-step hook
(``Probe.end_step``); on a 0.1 ms step every line in them shows
(bench/bench_step_ir.py counts it).  The rest is derived when it is read: the
batch index from the training iterator's own counter (``locate``), the epoch
from ``DataLoader.__iter__``; the patches that watch batches and loss calls
are switched on only for the length of a validation pass (``watch_side``).
Within a training step the phase stays ``forward_pass``: the probe does not
follow the step through loading, forward, loss, backward and optimizer, which
would cost stores on every step; a crash names the finer phase from its
frames (torch's data, autograd and optim modules), which the classifier
prefers to this coarse reading.  Validation and checkpoints set their phase.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from tlog import protocol
from tlog.hook import live
from tlog.hook.emitter import Emitter
from tlog.hook.live import STEP
from tlog.hook.probes import accumulation
from tlog.hook.probes.report import Reporter
from tlog.hook.probes.window import Window

Undo = Callable[[], None]
MAX_WINDOW = 10_000  # held losses before a report is forced (a primary optimizer that stopped stepping)


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else 0


@dataclass(frozen=True)
class Settings:
    """What ``tlog run`` asked of the probe, through the environment."""

    log_every: int = 0  # a row per N steps (their mean); 0: every step's row, sent every AUTO_INTERVAL_S
    grad_norm: int = 0  # total gradient norm every N steps; 0: off

    @classmethod
    def from_env(cls) -> Settings:
        return cls(log_every=_env_int(protocol.ENV_LOG_EVERY), grad_norm=_env_int(protocol.ENV_GRAD_NORM))


class OptState:
    """One optimizer as the probe knows it: its name (opt1, opt2, ... by creation) and step count."""

    __slots__ = ("dead", "index", "lr", "name", "pending", "ref", "steps")

    def __init__(self, ref: Callable[[], Any], index: int) -> None:
        self.ref = ref  # a weak reference: the probe keeps an optimizer (and its state) alive only while ...
        self.pending: Any = None  # ... a step of it awaits its report, which reads its learning rate
        self.index = index
        self.name = f"opt{index}"
        self.steps = 0
        self.lr: Any = None  # the first param group's lr at its last step (its changes go to the window)
        self.dead = False  # collected; forgotten once its steps are reported


_DEPENDENT = {"step": ("loss",), "report": ("loss",)}


def resume_step() -> int:
    """The step of the checkpoint tlog restarted this run from (TLOG_RESUME_STEP), else 0."""
    return _env_int(protocol.ENV_RESUME_STEP)


def resume_epoch() -> int:
    """The epoch a run restarted from a checkpoint is in (TLOG_RESUME_EPOCH: the checkpoint's, or the next
    one when its epoch was complete), else 0."""
    return _env_int(protocol.ENV_RESUME_EPOCH)


def _no_step_patch(opt: Any) -> OptState:
    """Only the step patch's hook ends a step of an optimizer, and it brings its own registration."""
    raise RuntimeError("an optimizer step without tlog's step patch")


class Probe:
    """State shared by the patches; each capability switches itself off on its first failure."""

    def __init__(self, em: Emitter, settings: Settings) -> None:
        self.em = em
        self.settings = settings
        self.step = resume_step()  # a restart from a checkpoint continues the global step, no sawtooth ...
        self.epoch0 = resume_epoch()  # ... and the epochs: the first training pass is this one
        self.live = live.attach()  # where the supervisor reads the step without a message (hook.live)
        if self.step:  # resumed: the steps before are the run's too (a fresh run has run none yet)
            self.live[STEP] = self.step
        self.off: set[str] = set()
        self.window = Window()
        self.optimizers: list[OptState] = []
        self.primary: OptState | None = None
        self.in_step: OptState | None = None
        self.step_loss_seen = False
        self.scaled: tuple[Any, Any] | None = None  # (scaled, unscaled) from the last GradScaler.scale
        self.by_id: dict[int, OptState] = {}  # known optimizers by id (no attribute is set on an optimizer)
        self.register_optimizer: Callable[[Any], OptState] = _no_step_patch  # the step patch's, with its hook
        self.loaders: Any = None  # data.Loaders, once the DataLoader patch is in
        # The training iterator's attributes (``vars(it)``), held instead of the iterator: the iterator may be
        # collected as usual (its workers shut down with it: an exception unwinding the loop drops it before
        # the crash hook runs), while its batch count stays readable, to the crash hook among others.
        self.train_vars: dict[str, Any] | None = None
        self.side: Any = None  # the open data.Side pass (validation, or training not yet recognised)
        self.side_watchers: dict[str, Callable[[bool], None]] = {}  # patches that are on only in a side pass
        self.total_batches: int | None = None
        self.reporter = Reporter(self)
        self.saves: Any = None  # save.Saves, once the torch.save patch is in (framework adapters use it)
        self.rescaled: list[tuple[int, float]] = []  # this step's losses held times their divisor (accumulation)
        self.owned: frozenset[str] = frozenset()  # names a framework adapter reports itself: left out of the rows
        self.undoers: dict[str, Undo] = {}
        em.locate = self.locate

    def fail(self, name: str, exc: BaseException) -> None:
        """Switch a capability off after its first failure, and say so once.

        Its patch is undone (torch's own function is back in place), so no hot path ever checks a switch.
        Without step counting or reports, the losses would pile up unread: loss capture goes off with them.
        """
        if name in self.off:
            return
        self.em.warn_once(f"probe-{name}", f"tlog probe '{name}' disabled after an error: {exc!r}", "probe")
        for off in (name, *_DEPENDENT.get(name, ())):
            self.off.add(off)
            self.side_watchers.pop(off, None)
            undo = self.undoers.pop(off, None)
            if undo is not None:
                try:
                    undo()
                except Exception:  # noqa: BLE001 - half-undone is still better than raising into training
                    pass
        if name in _DEPENDENT:
            self.window.reset()
            self.em.hold = False  # no report will send held calls any more
            self.em.flush_deferred()

    # -- losses and steps (the hot path: see the module's docstring) ---------------------------------------------
    def unusual_backward(self, tensor: Any) -> Any:
        """The backward of a side pass, of an AMP-scaled loss or of a closure step: the loss to hold, or None."""
        if self.side is not None:
            try:
                self.loaders.on_backward()
            except Exception as exc:  # noqa: BLE001 - the loader's trouble, not the loss's
                self.side = None
                self.fail("dataloader", exc)
        scaled = self.scaled
        if scaled is not None:  # AMP: record the loss, not loss * scale
            self.scaled = None
            if tensor is scaled[0]:
                tensor = scaled[1]
        if self.in_step is not None:  # inside an optimizer's step(closure)
            if self.step_loss_seen:
                return None
            self.step_loss_seen = True
        return tensor

    def end_step(self, opt: Any = None, args: Any = None, kwargs: Any = None) -> None:
        """Close the step in progress.  Registered as torch's optimizer post-step hook, so one call does all a
        step needs; ``opt`` is None for a bare backward in a loop with no optimizer at all.  The primary
        optimizer's steps (or bare backwards) advance the global step."""
        try:
            window = self.window
            if self.rescaled:  # pre-divided losses held times N: they stand only for N micro-batches
                accumulation.settle(window.losses, window.mark, self.rescaled)
            if opt is not None:
                owner = self.by_id.get(id(opt)) or self.register_optimizer(opt)
                owner.steps += 1
                owner.pending = opt
                self.in_step = None
                primary = self.primary
                if owner is not primary:
                    if primary is not None and not primary.dead:  # another optimizer (a GAN's second)
                        window.close(owner, self.step, self.em.batch)
                        if window.mark > MAX_WINDOW:
                            self.reporter.report()
                        return
                    self.primary = owner
            else:
                owner = None
            self.step = step = self.step + 1
            self.em.step = step
            self.live[STEP] = step  # the live page: a plain store (see hook.live)
            window.mark = end = len(window.losses)  # Window.close, inlined: this runs every step
            window.ends.append(end)
            window.owners.append(owner)
            window.stepnos.append(step)
            window.batches.append(self.em.batch)
            window.primary_steps += 1
            if owner is not None and (lr := opt.param_groups[0].get("lr")) is not owner.lr:
                owner.lr = lr  # the lr this step used (a scheduler sets the next one after it)
                window.lrs.append((step, lr))
            reporter = self.reporter
            if (step >= reporter.next_step) if reporter.every else (perf_counter() >= reporter.next_t):
                if len(self.optimizers) > 1:  # the others' steps of this iteration belong to this row
                    reporter.due = (self.em.epoch, self.em.batch)
                else:
                    reporter.report()
        except Exception as exc:  # noqa: BLE001
            self.fail("step", exc)

    def locate(self) -> None:
        """Bring the batch index up to date for an event that needs it now (a crash in the forward pass): the
        backward keeps it on the hot path, a step late while the next batch is fetched and run forward."""
        counts = self.train_vars
        if counts is not None:
            n = counts.get("_num_yielded", 0)
            self.em.batch = n - 1 if n else None

    def watch_side(self, on: bool) -> None:
        """Switch the side-pass patches on (a pass over a loader other than the training one) or off."""
        for watch in list(self.side_watchers.values()):
            watch(on)

    def idle(self) -> None:
        """Time spent outside training (validation, a checkpoint) does not count against throughput."""
        if not self.window.ends:
            self.window.t0 = perf_counter()
            self.reporter.samples0 = self.samples_seen()

    def samples_seen(self) -> int:
        return self.loaders.samples_seen() if self.loaders is not None else 0

    def report_pending(self) -> None:
        """Report the closed steps not yet reported (epoch end, validation, checkpoint, exit)."""
        if self.window.ends and "report" not in self.off:
            self.reporter.report()

    def finish(self) -> None:
        """At interpreter exit: nothing read stays unreported."""
        self.report_pending()
        self.em.flush_deferred()
