"""``tlog run``: one experiment, supervised from launch to final status.

The session owns the experiment's single writer.  Reader threads hand it the
child's events and output; it stamps the attempt number, keeps what a failure
record needs (the crash event, the stderr tail), decides the final status from
the exit (never from the child), and closes the files cleanly whatever happens.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tlog
from tlog.store import layout
from tlog.store.writer import ExperimentWriter
from tlog.supervisor import launch
from tlog.supervisor.display import Display, QuietDisplay, make_display
from tlog.supervisor.ingest import StreamReader
from tlog.supervisor.limits import oom_kill_count
from tlog.supervisor.monitor import Monitor
from tlog.supervisor.nvml import NvmlGateway
from tlog.views.viewstate import ViewState

READER_JOIN_S = 5.0
MEMORY_TIMELINE_S = 30.0


@dataclass(frozen=True)
class RunOptions:
    """Everything ``tlog run`` was asked to do; saved in training_config.json under 'tlog'."""

    target: tuple[str, ...]
    is_command: bool = False
    name: str | None = None
    log_dir: str = layout.DEFAULT_LOG_DIR
    grace: float = 10.0
    instrument: bool = True
    quiet: bool = False
    panel: bool | None = None
    status_every: float = 30.0
    monitor_interval: float = 0.5
    monitor_window: int = 2
    extra_env: dict[str, str] = field(default_factory=dict)

    def default_name(self) -> str:
        stem = Path(self.target[0]).stem if self.target else "run"
        if self.is_command and self.target and Path(self.target[0]).name.startswith("python"):
            stem = next((Path(a).stem for a in self.target[1:] if not a.startswith("-")), stem)
        return f"{stem or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class AttemptResult:
    attempt: int
    exit_code: int
    signal: int | None
    status: str
    error: dict | None


class Session:
    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.state = ViewState()
        self.display: Display = QuietDisplay(self.state)
        self.monitor: Monitor | None = None
        self.attempt = 0
        self.crash: dict | None = None
        self.writer: ExperimentWriter | None = None
        self.signaller: launch.GroupSignaller | None = None
        self.pending_signal: int | None = None

    # -- setup --------------------------------------------------------------------------
    def prepare(self) -> Path:
        """Validate the target and claim the experiment directory (errors are LaunchError/ExperimentError)."""
        opts = self.opts
        if opts.is_command:
            self.argv = launch.command_argv(list(opts.target))
        else:
            self.argv = launch.script_argv(opts.target[0], list(opts.target[1:]))
        name = opts.name or opts.default_name()
        exp_dir, suffixed = layout.create_experiment_dir(Path(opts.log_dir), name)
        if suffixed:
            self.display.message(f"experiment {name!r} exists; this run is {exp_dir.name!r}")
        self.exp_dir = exp_dir
        self.writer = ExperimentWriter(exp_dir)
        self.state.name = exp_dir.name
        self.state.command = " ".join(self.argv)
        self.display = make_display(self.state, quiet=opts.quiet, panel=opts.panel,
                                    status_every=opts.status_every)
        return exp_dir

    def emit(self, kind: str, data: dict, **context: object) -> None:
        """An event of the supervisor's own, into the same stream as the child's."""
        event = {"kind": kind, "t": time.time(), "attempt": self.attempt, **context, "data": data}
        self.writer.write_events([event])
        self.writer.flush()
        self.state.apply(event)

    def say(self, text: str) -> None:
        self.display.message(text)
        if self.writer is not None:
            self.writer.message(text)

    # -- child callbacks (reader threads) ------------------------------------------------
    def on_events(self, events: list[dict]) -> None:
        attempt = self.attempt
        for event in events:
            event["attempt"] = attempt
            if event["kind"] == "crash":
                self.crash = event
        self.writer.write_events(events)
        if self.display.wants_state:
            apply = self.state.apply
            for event in events:
                apply(event)

    def on_output(self, stream: str, lines: list[str]) -> None:
        self.writer.write_output("|" if stream == "stdout" else "!", lines)
        if self.display.wants_lines:
            self.display.lines(stream, lines)

    def on_sample(self, row: dict) -> None:
        if row.get("nprocs"):  # a reading after the child is gone says nothing about the run
            self.emit("system", row)

    def on_warning(self, warning: dict) -> None:
        self.emit("warning", warning)

    # -- running ------------------------------------------------------------------------
    def run(self) -> int:
        """Run to the end; returns tlog's exit code (the child's, 128+N for signal N)."""
        self._record_start()
        previous = launch.install_handlers(self._on_signal)
        status = "failed"
        nvml = NvmlGateway(on_warning=self.writer.message)  # no GPU is normal: a note in training.log
        self.monitor = Monitor(os.getpid(), interval=self.opts.monitor_interval, window=self.opts.monitor_window,
                               on_sample=self.on_sample, on_warning=self.on_warning, nvml=nvml)
        self.monitor.baseline()
        try:
            with self.display:
                result = self._run_attempt(1)
            status = result.status
            return result.exit_code
        finally:
            launch.restore_handlers(previous)
            self.monitor.stop()
            nvml.close()
            summary = self.writer.close(status)
            self._farewell(summary)

    def _record_start(self) -> None:
        self.emit("meta", {"host": platform.node(), "tlog": tlog.__version__, "supervisor_pid": os.getpid(),
                           "command": list(self.argv), "cwd": os.getcwd(), **git_info(self._script_dir())})
        settings = asdict(self.opts)
        settings["target"] = list(self.opts.target)
        self.emit("config", {"tlog": settings, "command": list(self.argv)})
        self.say(f"experiment {self.exp_dir.name} -> {self.exp_dir}")

    def _script_dir(self) -> str:
        if self.opts.is_command:
            return os.getcwd()
        return os.path.dirname(os.path.abspath(self.opts.target[0]))

    def _child_env(self, attempt: int) -> dict[str, str]:
        extra = {"TLOG_EXPERIMENT": self.exp_dir.name, "TLOG_EXP_DIR": str(self.exp_dir.resolve()),
                 "TLOG_ATTEMPT": str(attempt), **self.opts.extra_env}
        if not self.opts.instrument:
            extra["TLOG_NO_INSTRUMENT"] = "1"
        return launch.child_env(extra)

    def _run_attempt(self, attempt: int) -> AttemptResult:
        self.attempt = attempt
        self.crash = None
        self.oom_before = oom_kill_count()
        proc = launch.spawn(launch.ChildSpec(self.argv, not self.opts.is_command, self._child_env(attempt)))
        self.monitor.pid = proc.pid
        self.monitor.start()
        self.signaller = launch.GroupSignaller(proc.pid, self.opts.grace, self.say)
        self.emit("attempt", {"event": "start", "attempt": attempt, "pid": proc.pid, "argv": list(self.argv)})
        if self.pending_signal is not None:
            self.signaller.forward(self.pending_signal)
        readers = self._start_readers(proc)
        returncode = proc.wait()
        self.signaller.cancel()
        self._drain(readers, proc.pid)
        return self._finish_attempt(attempt, returncode, readers)

    def _start_readers(self, proc: subprocess.Popen) -> list[StreamReader]:
        readers = []
        for stream, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            fd = os.dup(pipe.fileno())
            pipe.close()
            reader = StreamReader(fd, stream, self.on_events, self.on_output, self.display, self.writer.flush)
            reader.start()
            readers.append(reader)
        return readers

    def _drain(self, readers: list[StreamReader], pid: int) -> None:
        """Wait for the pipes to close; leftovers of the group holding them open are killed."""
        deadline = time.monotonic() + READER_JOIN_S
        for reader in readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        if any(r.is_alive() for r in readers):
            self.say("processes of the run outlived it and held its output open; killing them")
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            for reader in readers:
                reader.join(2.0)
        for reader in readers:
            if reader.error is not None:
                self.say(f"reading the run's {reader.stream} failed: {reader.error!r}")
            if reader.splitter.malformed:
                self.say(f"{reader.splitter.malformed} malformed event line(s) on {reader.stream} kept as output")

    def _finish_attempt(self, attempt: int, returncode: int, readers: list[StreamReader]) -> AttemptResult:
        exit_code, sig = launch.exit_status(returncode)
        forwarded = self.signaller.forwarded if self.signaller else None
        oom_delta = _delta(self.oom_before, oom_kill_count())
        status = decide_status(exit_code, sig, forwarded, oom_delta)
        error = None
        if status != "finished" and forwarded is None:
            error = self._error_record(attempt, exit_code, sig, readers, oom_delta)
        exit_data = {"event": "exit", "attempt": attempt, "exit_code": exit_code, "signal": sig,
                     "signal_name": launch.signal_name(sig) or None, "status": status,
                     "oom_kill_delta": oom_delta, "peaks": self.monitor.peaks()}
        if error is not None:
            exit_data["cause"] = error["cause"]
        if forwarded is not None:
            exit_data["forwarded_signal"] = launch.signal_name(forwarded)
        self.emit("attempt", {k: v for k, v in exit_data.items() if v is not None})
        return AttemptResult(attempt, exit_code, sig, status, error)

    def _error_record(self, attempt: int, exit_code: int, sig: int | None, readers: list[StreamReader],
                      oom_delta: int | None) -> dict:
        """Classify the failure from everything known now, and record it."""
        from tlog import failure

        stderr = next(r for r in readers if r.stream == "stderr")
        position = self.writer.position()
        record = failure.failure_record(
            self.crash, exit_code=None if sig else exit_code, signal=sig, stderr_tail=list(stderr.tail),
            phase=position["phase"], position=position, samples=self.monitor.recent(MEMORY_TIMELINE_S),
            oom_kill_delta=oom_delta)
        error = failure.error_record(record, attempt=attempt)
        error["peaks"] = self.monitor.peaks()
        error["memory_timeline"] = [{k: r.get(k) for k in ("t", "rss_mb", "headroom_mb", "mem_limit_mb")}
                                    for r in record.samples]
        self.emit("error", error, step=record.step, epoch=record.epoch, batch=record.batch)
        return error

    def _on_signal(self, signum: int) -> None:
        if self.signaller is None:
            self.pending_signal = signum
        else:
            self.signaller.forward(signum)

    def _farewell(self, summary: dict) -> None:
        status = summary.get("status")
        steps = summary.get("steps")
        parts = [f"{status}", f"{steps} steps" if steps is not None else None, str(self.exp_dir)]
        self.display.message(" | ".join(p for p in parts if p))
        errors = summary.get("errors", {}).get("items") or []
        if errors and status != "finished":
            last = errors[-1]
            self.display.message(f"{last.get('category')}: {last.get('cause')}")


def decide_status(exit_code: int, sig: int | None, forwarded: int | None, oom_delta: int | None = None) -> str:
    """The run's status from how it ended (the hook's opinion does not count)."""
    if sig is None and exit_code == 0:
        return "finished"
    if sig == signal.SIGKILL and forwarded is None and oom_delta:
        return "oom-killed"
    if sig is not None or forwarded is not None:
        return "killed"
    return "failed"


def _delta(before: int | None, after: int | None) -> int | None:
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
