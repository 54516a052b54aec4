"""The child's environment as the run records it (meta event, training_config.json): one builder for a
supervised child (startup, the torch probe adds versions) and a direct run (direct.py)."""

from __future__ import annotations

import os
import sys


def environment() -> dict:
    """argv, cwd, pid, Python version and executable, host; no platform import (it alone costs the child ~2 ms)."""
    return {"argv": list(getattr(sys, "orig_argv", sys.argv)), "cwd": os.getcwd(), "pid": os.getpid(),
            "python": "{}.{}.{}".format(*sys.version_info[:3]), "executable": sys.executable,
            "host": os.uname().nodename}
