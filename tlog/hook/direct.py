"""The script runs under plain ``python``: tlog writes the experiment directory itself.

The same store code the supervisor uses writes the same layout, so reports
cannot tell the two apart; the status is decided here at interpreter exit
(finished, or failed when the excepthook saw an exception).
"""

from __future__ import annotations

import atexit
import os
import platform
import sys
import time
from pathlib import Path

from tlog.hook import crash
from tlog.hook.emitter import StoreEmitter


def default_name() -> str:
    """``<script stem>-<YYYYmmdd-HHMMSS>``, as ``tlog run`` names experiments."""
    script = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c", "-m") else "python"
    return f"{Path(script).stem or 'python'}-{time.strftime('%Y%m%d-%H%M%S')}"


def open_direct_emitter() -> StoreEmitter:
    from tlog.store import layout

    log_dir = Path(os.environ.get("TLOG_LOG_DIR", layout.DEFAULT_LOG_DIR))
    name = os.environ.get("TLOG_NAME") or default_name()
    exp_dir, _ = layout.create_experiment_dir(log_dir, name)
    em = StoreEmitter(str(exp_dir))
    em.emit("meta", {
        "argv": list(getattr(sys, "orig_argv", sys.argv)),
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "host": platform.node(),
        "supervised": False,
    })
    em.emit("attempt", {"event": "start", "attempt": 1, "pid": os.getpid()}, attempt=1)
    crash.install()
    atexit.register(_finish, em)
    return em


def _finish(em: StoreEmitter) -> None:
    status = "failed" if em.crashed else "finished"
    em.emit("attempt", {"event": "exit", "attempt": 1, "status": status,
                        "exit_code": 1 if em.crashed else 0}, attempt=1)
    em.close(status)
