"""Injected through PYTHONPATH by ``tlog run``: starts the hook, then chains to any other sitecustomize.

This directory holds only this file, so nothing else of tlog's shadows the
script's own top-level modules.
"""

import os
import sys


def _start_tlog() -> None:
    try:
        from tlog.hook import startup
    except ImportError:
        pkg_dir = os.environ.get("TLOG_PKG_DIR")  # protocol.ENV_PKG_DIR: tlog is not importable yet
        if not pkg_dir:
            return
        sys.path.append(pkg_dir)
        try:
            from tlog.hook import startup
        except ImportError:
            return
    try:
        startup.start()
    except Exception as exc:  # noqa: BLE001 - a broken hook must never stop the script
        sys.stderr.write(f"tlog: hook failed to start, running without it: {exc!r}\n")


def _chain() -> None:
    """Run the sitecustomize ours shadows, as Python would have without us."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


if os.environ.get("TLOG_DISABLE") != "1":  # protocol.ENV_DISABLE, read before importing tlog
    _start_tlog()
_chain()
