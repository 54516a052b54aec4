"""What ``tlog run`` was asked to do, and how a run ended.

Kept apart from the session so the CLI, tests and reports can use the options
and the status rule without the supervisor's machinery.
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tlog.settings import RUN_DEFAULTS as RUN
from tlog.store import layout
from tlog.supervisor import restart, scheduler, torchrun


@dataclass(frozen=True)
class RunOptions:
    """Everything ``tlog run`` was asked to do; saved in training_config.json under 'tlog'."""

    target: tuple[str, ...]
    is_command: bool = False
    name: str | None = None
    log_dir: str = layout.DEFAULT_LOG_DIR
    grace: float = RUN["grace"]
    instrument: bool = True
    quiet: bool = False
    panel: bool | None = None
    status_every: float = RUN["status_every"]
    monitor_interval: float = RUN["monitor_interval"]
    monitor_window: int = 2
    extra_env: dict[str, str] = field(default_factory=dict)
    hang_timeout: float | None = None
    restart_policy: restart.RestartPolicy = field(default_factory=restart.RestartPolicy)
    resume_arg: str | None = None
    checkpoint_glob: str | None = None
    log_every: int = RUN["log_every"]  # probe reports every N steps; 0: at the first step, then every 0.5 s at most
    grad_norm: int = RUN["grad_norm"]  # probe records the total gradient norm every N steps; 0: off
    scrape: tuple[str, ...] = ()  # --scrape: "" for the default pattern, else the user's regexes; () off
    settings: dict = field(default_factory=dict)  # tlog.toml / [tool.tlog] values (tlog.settings), saved with the run
    dist: torchrun.DistOptions | None = None  # --nproc-per-node & co.: the script runs under torchrun
    notify: tuple[str, ...] = ()  # --notify: shell commands run when the run ends or restarts
    notify_url: tuple[str, ...] = ()  # --notify-url: webhooks POSTed the same outcome as JSON
    export_live: str | None = None  # --export tensorboard:DIR: TensorBoard event files written as the run goes
    keep_secrets: bool = False  # --keep-secrets: credential-named values stored as given (tlog.store.redact)

    def default_name(self) -> str:
        stem = Path(self.target[0]).stem if self.target else "run"
        if self.is_command and torchrun.is_launcher(self.target):  # torchrun [options] train.py: the script's
            stem = next((Path(a).stem for a in self.target if a.endswith(".py")), stem)
        elif self.is_command and self.target and Path(self.target[0]).name.startswith("python"):
            stem = next((Path(a).stem for a in self.target[1:] if not a.startswith("-")), stem)
        return f"{stem or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"



def decide_status(exit_code: int, sig: int | None, forwarded: int | None, oom_delta: int | None = None,
                  hung: bool = False) -> str:
    """The run's status from how it ended (the hook's opinion does not count); a signal the scheduler sent
    (Slurm's preemption or time limit) is not the user's kill."""
    if hung:
        return "hung"
    if sig is None and exit_code == 0:
        return "finished"
    if sig == signal.SIGKILL and forwarded is None and oom_delta:
        return "oom-killed"
    if forwarded is not None:
        return scheduler.outcome(forwarded) or "killed"
    if sig is not None:
        return "killed"
    return "failed"


def diagnosed_status(status: str, sig: int | None, category: str) -> str:
    """The status once the failure is classified: a SIGKILL with memory at its limit is the OOM killer's,
    even where no cgroup counter said so."""
    return "oom-killed" if status == "killed" and sig == signal.SIGKILL and category == "memory" else status


def oom_delta(before: int | None, after: int | None) -> int | None:
    """Kills by the OOM killer during the run (cgroup counter after minus before), None if unknown."""
    return None if before is None or after is None else after - before


def git_info(directory: str) -> dict:
    """Commit and dirty flag of the repository holding the script, when there is one."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", directory, *args], capture_output=True, text=True, timeout=3)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": bool(status)}
