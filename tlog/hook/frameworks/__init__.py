"""Framework adapters: the numbers a training framework itself computes and logs, recorded as they are.

Each adapter is installed by the start-up import watcher right after the
script (or a library it uses) imports the framework module it patches, and
never before: nothing here imports a framework the script did not import.
An adapter reads what the framework already hands its own loggers (the dict
``transformers.Trainer.log`` receives; what Lightning gives its loggers'
``log_metrics``) with the framework's own step, and sends it as explicit
metrics (``src`` names the framework), so it wins over the generic probe's
value of the same name at the same step.  The names it owns outright (the
probe's backward scalars are pre-divided by gradient accumulation and are not
the framework's loss) are left out of the probe's rows, and the probe's own
validation capture stays off: the framework's eval values are the validation
series.  accelerate logs nothing of its own, so its adapter corrects the
probe instead: the divisor its ``backward`` applies, the end of its prefetching
loaders' passes, its gathered eval losses.  Like every probe, an adapter that
fails says so once and switches itself off; the framework goes on untouched.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from tlog.hook import registry


def watched() -> dict[str, Callable[[], None]]:
    """Module name -> installer, for the start-up import watcher."""
    return {"transformers.trainer": _installer("hf"),
            "lightning.pytorch.trainer.trainer": _installer("lightning", "lightning.pytorch"),
            "pytorch_lightning.trainer.trainer": _installer("lightning", "pytorch_lightning"),
            "accelerate.accelerator": _installer("accelerate")}


def _installer(name: str, *args: str) -> Callable[[], None]:
    def install() -> None:
        em = registry.get()
        try:
            importlib.import_module(f"tlog.hook.frameworks.{name}").install(em, *args)
        except Exception as exc:  # noqa: BLE001 - an unexpected framework version: the generic probes remain
            em.warn_once(f"probe-{name}", f"tlog {name} adapter disabled: {exc!r}", "probe")

    return install
