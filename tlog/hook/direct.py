"""The script runs under plain ``python``: tlog writes the experiment directory itself.

The same store code the supervisor uses writes the same layout, so reports
cannot tell the two apart; the status is decided here at interpreter exit
(finished, or failed when the excepthook saw an exception).
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from pathlib import Path

from tlog import protocol
from tlog.hook.emitter import StoreEmitter
from tlog.hook.environment import environment


def default_name() -> str:
    """``<script stem>-<YYYYmmdd-HHMMSS>``, as ``tlog run`` names experiments."""
    script = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c", "-m") else "python"
    return f"{Path(script).stem or 'python'}-{time.strftime('%Y%m%d-%H%M%S')}"


def open_direct_emitter(name: str | None = None, log_dir: str | os.PathLike | None = None) -> StoreEmitter:
    """Claim a new experiment directory and write it; ``name``/``log_dir`` (the seed API's) win over the
    environment's ``TLOG_NAME``/``TLOG_LOG_DIR``, which win over the defaults."""
    from tlog.store import layout

    log_dir = Path(log_dir or os.environ.get(protocol.ENV_LOG_DIR) or layout.DEFAULT_LOG_DIR)
    name = name or os.environ.get(protocol.ENV_NAME) or default_name()
    exp_dir, _ = layout.create_experiment_dir(log_dir, name)
    em = StoreEmitter(str(exp_dir))
    em.emit("meta", {**environment(), "supervised": False})
    em.emit("attempt", {"event": "start", "attempt": 1, "pid": os.getpid()}, attempt=1)
    atexit.register(_finish, em)
    return em


def _finish(em: StoreEmitter) -> None:
    status = "failed" if em.crashed else "finished"
    em.emit("attempt", {"event": "exit", "attempt": 1, "status": status,
                        "exit_code": 1 if em.crashed else 0}, attempt=1)
    em.close(status)
