"""What the injected sitecustomize does in a supervised child, once, at start-up.

Kept to a few milliseconds: the emitter, the crash hooks, a meta event, and a
finder that installs the torch probe only if and when the script imports torch.
"""

from __future__ import annotations

import os
import platform
import sys

from tlog.hook import crash, emitter

ENV_NO_INSTRUMENT = "TLOG_NO_INSTRUMENT"


def start() -> None:
    em = emitter.get()
    crash.install()
    em.emit("meta", {
        "argv": list(getattr(sys, "orig_argv", sys.argv)),
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "executable": sys.executable,
    })
    if os.environ.get(ENV_NO_INSTRUMENT) != "1":
        sys.meta_path.insert(0, TorchWatcher())


class TorchWatcher:
    """A meta-path finder that waits for ``import torch`` and then installs the probe.

    Duck-typed (no importlib.abc import) to keep start-up cheap; it removes
    itself on first sight of torch so later imports pay nothing.
    """

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        if name != "torch":
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module: object) -> None:
            original(module)
            _install_probe()

        loader.exec_module = exec_module
        return spec


def _install_probe() -> None:
    em = emitter.get()
    try:
        from tlog.hook import torch_probe

        torch_probe.install(em)
    except Exception as exc:  # noqa: BLE001 - an unexpected torch: no probe, training goes on
        em.warn_once("probe-install", f"torch probe disabled: {exc!r}")
