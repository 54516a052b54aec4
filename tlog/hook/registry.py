"""The process's one emitter, chosen once from the environment: the supervisor's pipe (``tlog run``), the
experiment directory (plain ``python``: hook/direct.py) or none (a helper process, the kill switch).

Kept apart from the emitter classes (hook/emitter.py), which the direct mode builds on, so that nothing
imports in a circle; the direct mode is imported only when it is chosen, so a supervised child never loads it.
"""

from __future__ import annotations

import os

from tlog import protocol
from tlog.hook import crash
from tlog.hook.emitter import Emitter, WireEmitter

_emitter: Emitter | None = None


def get() -> Emitter:
    """The process's emitter, chosen once from the environment."""
    global _emitter
    if _emitter is None:
        _emitter = _create()
    return _emitter


def current() -> Emitter | None:
    """The emitter if one exists already (the crash hook must not create one)."""
    return _emitter


def install(name: str | None = None, log_dir: str | os.PathLike | None = None) -> Emitter:
    """The process's emitter; with none yet and no supervisor, a direct one for ``log_dir/name``.

    Used by the seed API, whose constructor names the experiment before any
    event is sent; once an emitter exists (under ``tlog run``, or after a first
    ``tlog.log``) it is returned as it is.
    """
    global _emitter
    if _emitter is None:
        _emitter = WireEmitter() if os.environ.get(protocol.ENV_SUPERVISED) == "1" else _direct(name, log_dir)
    return _emitter


def silence() -> None:
    """This process must not report (a multiprocessing helper, a subprocess whose output its parent reads):
    ``tlog.log`` and friends become no-ops in it."""
    global _emitter
    _emitter = _silent()


def _silent() -> Emitter:
    em = Emitter()
    em.enabled = False
    return em


def _create() -> Emitter:
    if os.environ.get(protocol.ENV_DISABLE) == "1":  # the kill switch: tlog does nothing at all, the script runs
        return _silent()
    if os.environ.get(protocol.ENV_SUPERVISED) == "1":
        return WireEmitter()
    return _direct(None, None)


def _direct(name: str | None, log_dir: str | os.PathLike | None) -> Emitter:
    from tlog.hook.direct import open_direct_emitter  # no supervisor: only then is the store's code loaded

    em = open_direct_emitter(name, log_dir)
    crash.install(current)
    return em
