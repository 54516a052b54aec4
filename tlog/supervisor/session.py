"""``tlog run``: one experiment, supervised from launch to final status.

Three lifetimes, one object each.  The ``Session`` is the run: it claims the experiment directory
(``prepare``), owns the experiment's single writer (through the ``Journal``), the resource monitor, the
process tree, the signal route and the restart state machine, and closes the files cleanly whatever
happens.  Each child it starts is an ``attempt.Attempt``, which owns that child's threads and per-attempt
state and says how it ended; restarts are decided here, by the restart machine (``restart.transition``):
the session reports each start and exit and acts on the state it gets back.  A distributed run's child is
torchrun (``torchrun.DistOptions``): each round of torchrun's own restarts is an attempt too, started
inside the same child (``Attempt._next_round``).

Threads the session owns, each ended in ``run``'s ``finally``: the monitor's sampler (started by the first
attempt, stopped at the end), the display's refresh (its context), the guardian process, and the
notifiers' sends (waited for, bounded).  Signal handlers run on the main thread (``launch.SignalRoute``).

Seams: ``supervise`` takes the machine's edges (spawn, resource monitor, process tree, OOM counter), so a
test builds a session from a journal over its own writer and drives its attempts without a process.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import tlog
from tlog import protocol
from tlog.store import layout, safefile
from tlog.store.writer import ExperimentWriter
from tlog.supervisor import hang, launch, notify, proctree, restart, scheduler, torchrun
from tlog.supervisor.attempt import Attempt, AttemptResult, Plan, Sampler, Seams, Tree
from tlog.supervisor.display import Display, QuietDisplay, make_display
from tlog.supervisor.guardian import Guardian
from tlog.supervisor.journal import Feed, Journal
from tlog.supervisor.limits import oom_kill_count
from tlog.supervisor.monitor import Monitor, Thresholds
from tlog.supervisor.nvml import NvmlGateway
from tlog.supervisor.options import RunOptions, git_info
from tlog.supervisor.recovery import Recovery
from tlog.supervisor.scrape import make_scraper
from tlog.views.viewstate import ViewState


def prepare(opts: RunOptions) -> Session:
    """Validate the target and claim the experiment directory (errors are LaunchError/ExperimentError)."""
    name = opts.name or opts.default_name()
    argv = _argv(opts, name)
    state = ViewState()
    display: Display = QuietDisplay(state)
    safefile.FAULTS.report = lambda text: display.message(text)  # noqa: PLW0108 - display replaced below
    node = opts.dist.node if opts.dist is not None else None
    if node is None:
        exp_dir, suffixed = layout.create_experiment_dir(Path(opts.log_dir), name)
    else:  # one node of several: they share the experiment, each with its own files
        exp_dir, suffixed = layout.join_experiment_dir(Path(opts.log_dir), name, node), False
    if suffixed:
        display.message(f"experiment {name!r} exists; this run is {exp_dir.name!r}")
    ranked = opts.dist is not None or torchrun.is_launcher(argv)
    writer = ExperimentWriter(exp_dir, node=node, keep_secrets=opts.keep_secrets, ranked=ranked)
    state.name = exp_dir.name
    state.command = " ".join(argv)
    display = make_display(state, quiet=opts.quiet, panel=opts.panel, status_every=opts.status_every)
    live: Feed | None = None
    if opts.export_live:
        from tlog.export.live import LiveTensorBoard

        live = LiveTensorBoard(Path(opts.export_live), exp_dir.name, ranked=ranked)
    journal = Journal(writer, display, state, node=node, live=live)
    return Session(opts, argv, exp_dir, journal, notify.Notifier(opts.notify, opts.notify_url, writer.message))


def _argv(opts: RunOptions, name: str) -> tuple[str, ...]:
    """The child's command line; the script or command is checked even when torchrun will start it."""
    if opts.is_command:
        argv = launch.command_argv(list(opts.target))
    else:
        argv = launch.script_argv(opts.target[0], list(opts.target[1:]))
    return argv if opts.dist is None else opts.dist.argv(opts.target[0], list(opts.target[1:]), name)


class Session:
    """The run, across its attempts: from the first start to the final status (see the module docstring)."""

    def __init__(self, opts: RunOptions, argv: tuple[str, ...], exp_dir: Path, journal: Journal,
                 notifier: notify.Notifier) -> None:
        self.opts = opts
        self.argv = argv
        self.exp_dir = exp_dir
        self.journal = journal
        self.notifier = notifier
        self.policy = opts.restart_policy
        self.machine = restart.Machine()
        self.checkpoints = restart.Checkpoints(opts.checkpoint_glob)
        self.recovery = Recovery(journal)
        self.signals = launch.SignalRoute()
        self.scraper = make_scraper(opts.scrape)
        self.hang_rule = hang.HangRule.of(opts.hang_timeout)  # None: --hang-timeout 0

    def run(self) -> int:
        """Run to the end; returns tlog's exit code (the child's, 128+N for signal N)."""
        self._record_start()
        previous = launch.install_handlers(self.signals.on_signal, scheduler.extra_signals())
        status, writer = "failed", self.journal.writer
        nvml = NvmlGateway(on_warning=writer.message)  # no GPU is normal: a note in training.log
        monitor = self._monitor(nvml)
        proctree.become_subreaper()  # the run's orphans stay findable (and are reaped) here
        guardian = Guardian()  # ends the run if tlog dies
        tree = proctree.RunTree(lambda sid, start: self._new_session(guardian, tree, sid, start), guardian.cgroup)
        try:
            with self.journal.display:
                result = self.supervise(monitor, tree, lambda spec: launch.spawn(spec, tree.contain()))
            status = result.status
            return result.exit_code
        finally:
            tree.kill()
            tree.stop()
            guardian.close()
            launch.restore_handlers(previous)
            monitor.stop()
            nvml.close()
            self._close(writer.close(status))

    def supervise(self, monitor: Sampler, tree: Tree,
                  spawn: Callable[[launch.ChildSpec], subprocess.Popen] = launch.spawn,
                  oom_kills: Callable[[], int | None] = oom_kill_count) -> AttemptResult:
        """Drive the restart machine: attempts until one finishes or the policy (or the user) stops.  The
        arguments are the machine's edges every attempt touches (a test's fakes)."""
        seams = Seams(self.journal, monitor, tree, self.signals, self.recovery, self.checkpoints, self.scraper,
                      spawn, oom_kills)
        number = 1
        while True:
            self.machine = restart.transition(self.machine, restart.Started(), self.policy)
            result = Attempt.start(seams, self._plan(number)).run()
            self._exited(result)
            if self.machine.state is not restart.State.BACKING_OFF:
                return result
            number = result.attempt + 1  # torchrun's own restarts are attempts too
            self.notifier.send(notify.outcome("restarting", self.exp_dir.name, str(self.exp_dir.resolve()),
                                              self.journal.state.step, result.exit_code, result.error))
            if not self._back_off(number):
                reason = "interrupted while waiting to restart"
                self.machine = restart.transition(self.machine, restart.Cancelled(reason), self.policy)
                self.journal.emit("attempt", {"event": "stop", "attempt": result.attempt, "status": result.status,
                                              "stop_reason": reason})
                self.journal.say(f"{reason}: not restarting")
                return result
            self.machine = restart.transition(self.machine, restart.Waited(), self.policy)

    def _plan(self, number: int) -> Plan:
        """Attempt ``number``: from the newest checkpoint when it is a restart and there is one."""
        resume = self.checkpoints.resume_point() if number > 1 else None
        argv = (*self.argv, *restart.resume_args(self.opts.resume_arg, resume))
        if number > 1 and resume is None:
            self.journal.say(f"no checkpoint to resume from: attempt {number} starts from the beginning")
        return Plan(number, argv, self._child_env(number, resume), resume, self.policy.max_attempts,
                    self.opts.grace, self.hang_rule)

    def _child_env(self, attempt: int, resume: restart.ResumePoint | None) -> dict[str, str]:
        extra = {protocol.ENV_EXPERIMENT: self.exp_dir.name, protocol.ENV_EXP_DIR: str(self.exp_dir.resolve()),
                 protocol.ENV_ATTEMPT: str(attempt), **self.opts.extra_env}
        if not self.opts.instrument:
            extra[protocol.ENV_NO_INSTRUMENT] = "1"
        extra[protocol.ENV_LOG_EVERY] = str(self.opts.log_every)
        extra[protocol.ENV_GRAD_NORM] = str(self.opts.grad_norm)
        if self.hang_rule is not None:
            extra[protocol.ENV_STACK_SIGNAL] = hang.STACK_SIGNAL_NAME
        return {**extra, **restart.resume_env(resume)}

    def _exited(self, result: AttemptResult) -> None:
        """The machine's decision on an attempt's exit, recorded with the exit event."""
        self.machine = m = restart.transition(self.machine, restart.Exited(result.failure), self.policy)
        data = dict(result.exit)
        if m.state.final and m.reason:
            data["stop_reason"] = m.reason
            self.journal.say(m.reason)
        elif m.state is restart.State.BACKING_OFF:
            data["next"] = "restart"
        self.journal.emit("attempt", {k: v for k, v in data.items() if v is not None})
        if m.state is restart.State.BACKING_OFF and result.error is not None:
            self.recovery.watch(result.error)

    def _back_off(self, number: int) -> bool:
        """Announce the restart and wait its delay; False when a signal asked tlog to stop meanwhile."""
        m, policy = self.machine, self.policy
        self.journal.emit("restart", {"attempt": number, "max_attempts": policy.max_attempts,
                                      "reason": m.reason, "delay_s": m.delay_s})
        self.journal.say(f"restarting (attempt {number} of {policy.max_attempts}) in {m.delay_s:g} s: {m.reason}")
        return self.signals.wait(m.delay_s)

    def _monitor(self, nvml: NvmlGateway) -> Monitor:
        opts, journal = self.opts, self.journal
        monitor = Monitor(os.getpid(), interval=opts.monitor_interval, window=opts.monitor_window,
                          on_sample=self._on_sample, on_warning=lambda warning: journal.emit("warning", warning),
                          nvml=nvml, thresholds=Thresholds.from_seed(opts.settings.get("monitoring_thresholds")))
        monitor.baseline()
        return monitor

    def _on_sample(self, row: dict) -> None:
        if row.get("nprocs"):  # a reading after the child is gone says nothing about the run
            self.journal.emit("system", row)

    def _record_start(self) -> None:
        git = git_info(self._script_dir())
        emit = self.journal.emit
        emit("meta", {"host": platform.node(), "tlog": tlog.__version__, "supervisor_pid": os.getpid(),
                      "command": list(self.argv), "cwd": os.getcwd(), **git})
        settings = asdict(self.opts)
        settings["target"] = list(self.opts.target)
        emit("config", {"tlog": settings, "command": list(self.argv),
                        **({"git": {"commit": git["git_commit"], "dirty": git["git_dirty"]}} if git else {})})
        self.journal.say(f"experiment {self.exp_dir.name} -> {self.exp_dir}")

    def _script_dir(self) -> str:
        if self.opts.is_command:
            return os.getcwd()
        return os.path.dirname(os.path.abspath(self.opts.target[0]))

    def _new_session(self, guardian: Guardian, tree: proctree.RunTree, sid: int, start: int) -> None:
        """A session of the run: the guardian must know it; one a descendant started goes to training.log."""
        guardian.session(sid, start)
        if tree.child is not None and sid != tree.child.pid:
            self.journal.writer.message(f"process {sid} of the run started a session of its own; it ends with the run")

    def _close(self, summary: dict) -> None:
        """After the writer closed: the live export, the farewell, the notifiers."""
        if self.journal.live is not None:
            self.journal.live.close()
        self._farewell(summary)
        self._notify_end(summary)

    def _notify_end(self, summary: dict) -> None:
        """The final outcome to every notifier (waited for, at most their timeout)."""
        errors = summary.get("errors", {}).get("items") or []
        status = str(summary.get("status"))
        exit_code = summary["attempts"][-1].get("exit_code") if summary.get("attempts") else None
        self.notifier.send(notify.outcome(status, self.exp_dir.name, str(self.exp_dir.resolve()),
                                          summary.get("steps"), exit_code,
                                          errors[-1] if errors and summary.get("status") != "finished" else None))
        self.notifier.wait()

    def _farewell(self, summary: dict) -> None:
        status = summary.get("status")
        steps = summary.get("steps")
        parts = [summary.get("outcome") or status, f"{steps} steps" if steps is not None else None,
                 str(self.exp_dir)]
        display = self.journal.display
        display.message(" | ".join(p for p in parts if p))
        errors = summary.get("errors", {}).get("items") or []
        if errors and status != "finished":
            last = errors[-1]
            display.message(f"{last.get('category')}: {last.get('cause')}")
            if last.get("remedy"):
                display.message(f"remedy: {last['remedy']}")
