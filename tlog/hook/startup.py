"""What the injected sitecustomize does in a supervised child, once, at start-up.

Kept to a few milliseconds: the emitter, the crash hooks, a meta and a config
event, and a finder that installs the probes only if and when the script
imports the module they patch (torch, argparse, a framework: see ``frameworks``).

Only one process speaks for the run on its pipe.  Processes that inherit the
hook but are not the training script's own voice stay silent:

- multiprocessing helpers (spawn DataLoader workers, the forkserver, the
  resource tracker), recognised by their command line; forked workers are
  silenced by the emitter's at-fork handler;
- a Python subprocess whose stdout is not the run's pipe (its parent captures
  the output: events there would corrupt what the parent reads).  The first
  hooked process records its stdout's identity in ``TLOG_WIRE``; descendants
  writing to the same pipe (torchrun's workers, a plain ``subprocess.run``)
  report, with their own rank, as the script's own output would appear;
- torchrun's elastic agent (``torchrun``, ``python -m torch.distributed.run``):
  it is Python and imports torch, but it trains nothing; it says once that it
  launched the run (a ``meta`` event with ``launcher``) and its workers report.
  A worker's ``meta`` carries its torchrun restart count, so the supervisor sees
  each round of torchrun's own restarts as an attempt.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tlog import protocol
from tlog.hook import crash, lifeline, registry, signals
from tlog.hook.environment import environment

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec
    from types import ModuleType

LAUNCHER_MODULES = frozenset({"torch.distributed.run", "torch.distributed.launch"})


def start() -> None:
    if os.environ.get(protocol.ENV_SUPERVISED) != "1":
        return  # a descendant whose environment was scrubbed of tlog's: not ours to report
    if _tlog_cli(getattr(sys, "orig_argv", sys.argv)):
        return  # a nested ``tlog run``: a supervisor with its own run, not the outer run's training script
    lifeline.install()
    if _multiprocessing_helper() or not _owns_wire():
        registry.silence()
        return
    if "RANK" not in os.environ and is_launcher(getattr(sys, "orig_argv", sys.argv)):
        os.write(1, protocol.encode("meta", protocol.hello({"launcher": "torchrun", "launcher_pid": os.getpid()})))
        registry.silence()
        return
    em = registry.get()
    crash.install(registry.current)
    signals.install(_send_held)
    env = environment()
    em.emit("meta", protocol.hello({**{k: env[k] for k in ("argv", "cwd", "pid", "python", "executable")},
                                    **_torchrun_worker()}))
    em.emit("config", {"environment": env})
    if os.environ.get(protocol.ENV_NO_INSTRUMENT) != "1":
        from tlog.hook import frameworks

        ImportWatcher({"torch": _install_torch_probe, "argparse": _install_args_probe, **frameworks.watched()}).arm()


def is_launcher(argv: list[str] | tuple[str, ...]) -> bool:
    """Whether a command line starts torchrun: ``torchrun ...``, ``python [/path/]torchrun ...`` or
    ``python -m torch.distributed.run ...`` (also the deprecated ``torch.distributed.launch``)."""
    if any(os.path.basename(a) == "torchrun" for a in argv[:2]):
        return True
    module = argv.index("-m") + 1 if "-m" in argv else 0
    return 0 < module < len(argv) and argv[module] in LAUNCHER_MODULES


def _torchrun_worker() -> dict:
    """What torchrun tells a worker and the supervisor needs: its restart round and where it runs."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" not in env:
        return {}
    count = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    return {"host": os.uname().nodename, "restart_count": int(count) if count.isdigit() else 0}


def _tlog_cli(argv: list[str] | tuple[str, ...]) -> bool:
    """``tlog ...`` (the console script, run by Python) or ``python [options] -m tlog ...``."""
    for i, arg in enumerate(argv[1:], 1):
        if arg == "-m":
            return argv[i + 1:i + 2] == ["tlog"]
        if not arg.startswith("-"):
            return os.path.basename(arg) == "tlog"
    return False


def _multiprocessing_helper() -> bool:
    """A process multiprocessing started from a fresh interpreter (spawn/forkserver child, resource tracker)."""
    argv = getattr(sys, "orig_argv", sys.argv)
    return "--multiprocessing-fork" in argv or any(a.startswith("from multiprocessing") for a in argv)


def _owns_wire() -> bool:
    """True when this process's stdout is the run's pipe (the first hooked process defines which that is)."""
    try:
        st = os.fstat(1)
    except OSError:
        return False
    identity = f"{st.st_dev}:{st.st_ino}"
    owner = os.environ.setdefault(protocol.ENV_WIRE, identity)
    return owner == identity


class ImportWatcher:
    """A meta-path finder that runs a callback right after a watched module is first imported.

    Duck-typed (no importlib.abc import) to keep start-up cheap; a module
    already imported gets its callback at once, and the finder removes itself
    once every watched module has been seen, so later imports pay nothing.
    """

    def __init__(self, callbacks: dict[str, Callable[[], None]]) -> None:
        self.callbacks = dict(callbacks)

    def arm(self) -> None:
        for name in [n for n in self.callbacks if n in sys.modules]:
            self.callbacks.pop(name)()
        if self.callbacks:
            sys.meta_path.insert(0, self)

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        callback = self.callbacks.pop(name, None)
        if callback is None:
            return None
        if not self.callbacks:
            sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)  # the other finders answer: ours no longer watches ``name``
        if spec is None or spec.loader is None:
            return spec
        original = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original(module)
            callback()

        spec.loader.exec_module = exec_module
        return spec


def _send_held() -> None:
    """What a termination signal must not take with the process: the probe's unreported steps and the held
    ``tlog.log`` calls (``signals``)."""
    em = registry.current()
    if em is None or not em.enabled:
        return
    probe_module = sys.modules.get("tlog.hook.torch_probe")
    probe = probe_module.current() if probe_module is not None else None
    if probe is not None:
        probe.finish()
    else:
        em.flush_deferred()


def _install_torch_probe() -> None:
    em = registry.get()
    try:
        from tlog.hook import torch_probe

        torch_probe.install(em)
    except Exception as exc:  # noqa: BLE001 - an unexpected torch: no probe, training goes on
        em.warn_once("probe-install", f"torch probe disabled: {exc!r}", "probe")


def _install_args_probe() -> None:
    em = registry.get()
    try:
        from tlog.hook.probes import args

        args.install(em)
    except Exception as exc:  # noqa: BLE001
        em.warn_once("probe-args", f"argparse probe disabled: {exc!r}", "probe")
