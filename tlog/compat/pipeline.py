"""Where the seed API's calls go: tlog's own emitter, never files of its own.

Under ``tlog run`` the process already has a wire emitter and the supervisor's
experiment wins over the name and directory the script asks for (a warning
event says so when they differ).  Under plain ``python`` the first seed object
opens the experiment the script names, ``log_dir/experiment_name``, through the
same store code; a taken name gets the next free ``name-N`` (tlog never writes
over another run, where the seed reused the directory).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tlog import protocol
from tlog.hook import registry
from tlog.hook.emitter import Emitter


@dataclass(frozen=True)
class Sink:
    """The emitter the seed objects write through, and the experiment it writes."""

    em: Emitter
    exp_dir: Path
    supervised: bool

    @property
    def attempt(self) -> int:
        value = os.environ.get(protocol.ENV_ATTEMPT, "")
        return int(value) if value.isdigit() else 1


def connect(experiment_name: str | None, log_dir: str | os.PathLike | None, fallback_name: str) -> Sink:
    """Attach to (or, without a supervisor, open) the experiment; warn when it is not the one asked for.

    ``experiment_name``/``log_dir`` are what the script asked for (None: nothing); ``fallback_name`` names
    a directory opened without a supervisor when the script asked for no name.
    """
    supervised = os.environ.get(protocol.ENV_SUPERVISED) == "1"
    em = registry.install(experiment_name or fallback_name, log_dir)
    default = Path(log_dir or "training_logs") / (experiment_name or fallback_name)
    exp_dir = (Path(os.environ.get(protocol.ENV_EXP_DIR) or default) if supervised
               else Path(getattr(em, "exp_dir", default)))
    sink = Sink(em, exp_dir, supervised)
    mismatch = _mismatch(exp_dir, experiment_name, log_dir)
    if mismatch:
        where = "tlog run records this run" if supervised else "this process already writes its experiment"
        em.warn(f"TrainingLoggingManager asked for {mismatch}; {where} in {exp_dir}", "config")
    return sink


def _mismatch(exp_dir: Path, name: str | None, log_dir: str | os.PathLike | None) -> str | None:
    """What was asked for and not given, in words; None when the experiment is the one asked for."""
    wanted = []
    if name and exp_dir.name != name and not _suffixed(exp_dir.name, name):
        wanted.append(f"experiment {name!r}")
    if log_dir and Path(log_dir).resolve() != exp_dir.parent.resolve():
        wanted.append(f"log_dir {os.fspath(log_dir)!r}")
    return " in ".join(wanted) or None


def _suffixed(actual: str, name: str) -> bool:
    """``name-2``: the name was taken, which the store says itself when it opens the directory."""
    head, _, tail = actual.rpartition("-")
    return head == name and tail.isdigit()


def probe_step() -> int | None:
    """The global step the torch probe counts (optimizer steps), once it has counted one; else None.

    Read from the probe's module only if it is loaded, so this never imports torch.
    """
    module = sys.modules.get("tlog.hook.torch_probe")
    probe = getattr(module, "_probe", None) if module is not None else None
    return probe.step if probe is not None and probe.step else None


class StoreLogHandler(logging.Handler):
    """Without a supervisor, the seed logger's lines go into training.log through the experiment's writer.

    Tagged ``!`` like the stderr lines a supervisor records, since the console
    copy of the same line goes to stderr.
    """

    def __init__(self, em: Emitter) -> None:
        super().__init__()
        self.em = em

    def emit(self, record: logging.LogRecord) -> None:
        writer = getattr(self.em, "writer", None)
        if writer is None or not self.em.enabled:
            return
        try:
            writer.write_output("!", self.format(record).splitlines() or [""], record.created)
        except Exception:  # noqa: BLE001 - logging's own policy: report and go on
            self.handleError(record)
