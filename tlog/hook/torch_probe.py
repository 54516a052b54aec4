"""PyTorch instrumentation, installed only once the script has imported torch.

Each capability of ``tlog.hook.probes`` is a patch: ``install`` wires it into
torch and keeps the function that undoes it.  A patch that fails to install,
or whose code raises later, reports one warning and switches itself off; the
original torch function keeps running, so training never stops because of
tlog.

The probe keeps the loop position (step, epoch, batch, phase) in plain
attributes of the emitter, so ``tlog.log`` and the crash hook see it for free.
This module is imported only once torch is; still, torch and the patches are
imported inside ``install`` so that nothing here can pull torch into a child
that never asked for it.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable
from typing import TYPE_CHECKING

from tlog import protocol
from tlog.hook.emitter import Emitter
from tlog.hook.environment import environment
from tlog.hook.live import EXITING

if TYPE_CHECKING:
    from tlog.hook.probes.state import Probe, Settings, Undo

_probe: Probe | None = None


def patches() -> tuple[tuple[str, Callable[[Probe], Undo]], ...]:
    """Every capability, by name, in installation order."""
    from tlog.hook.probes import data, losses, optim, save

    return (
        ("step", optim.patch),
        ("loss", losses.patch_backward),
        ("amp", losses.patch_scaler),
        ("validation", losses.patch_loss_modules),
        ("dataloader", data.patch_dataloader),
        ("mode", data.patch_module_mode),
        ("save", save.patch),
    )


def install(em: Emitter, settings: Settings | None = None) -> Probe:
    """Install every patch that this torch supports; idempotent."""
    global _probe
    if _probe is not None:
        return _probe
    import torch

    from tlog.hook.probes.state import Probe, Settings

    protocol.use_orjson()  # cheap now that torch has imported what orjson needs
    probe = Probe(em, settings or Settings.from_env())
    all_patches = patches()
    for name, patch in all_patches:
        try:
            probe.undoers[name] = patch(probe)
        except Exception as exc:  # noqa: BLE001 - an unexpected torch: this patch stays off
            probe.fail(name, exc)
    em.hold = "step" not in probe.off  # held tlog.log calls need the reports to send them
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
    em.emit("meta", {**versions, "probes": [name for name, _ in all_patches if name not in probe.off],
                     "log_every": probe.settings.log_every, "grad_norm": probe.settings.grad_norm})
    em.emit("config", {"environment": {**environment(), **versions}})
    atexit.register(_finish, probe)
    _probe = probe
    return probe


def current() -> Probe | None:
    """The installed probe, for the framework adapters (None before torch is imported, or when it is off)."""
    return _probe


def _finish(probe: Probe) -> None:
    """At exit: an open validation pass and the unreported steps are sent; nothing read is lost."""
    probe.live[EXITING] = 1  # the supervisor's hang detector gives the teardown its start-up allowance
    try:
        if probe.loaders is not None:
            probe.loaders.end_side()
        probe.finish()
    except Exception as exc:  # noqa: BLE001 - at exit a device may be gone; the run's status is not ours
        probe.fail("report", exc)
