"""``tlog run``: one experiment, supervised from launch to final status.

The session owns the experiment's single writer.  Reader threads hand it the
child's events and output; it stamps the attempt number, keeps what a failure
record needs (the crash event, the stderr tail), decides the final status from
the exit (never from the child), and closes the files cleanly whatever happens.
Attempts are driven by the restart state machine (``restart.transition``): the
session reports each start and exit, and acts on the state it gets back; a
``hang.HangWatch`` per attempt turns a silent child into a classified hang.
A distributed run's child is torchrun (``torchrun.DistOptions``): its workers
report with their ranks, a failure is recorded for its root-cause rank
(``ranks.blame``), and each round of torchrun's own restarts is an attempt.
"""

from __future__ import annotations

import os
import platform
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import tlog
from tlog.diagnosis import failure
from tlog.hook.crash import ENV_STACK_SIGNAL, signal_number
from tlog.store import layout, safefile
from tlog.store.writer import ExperimentWriter
from tlog.supervisor import hang, launch, notify, options, proctree, ranks, restart, scheduler, torchrun
from tlog.supervisor.display import Display, QuietDisplay, make_display
from tlog.supervisor.guardian import Guardian
from tlog.supervisor.ingest import StreamReader, drain, start_readers
from tlog.supervisor.limits import oom_kill_count
from tlog.supervisor.live import LivePage, merge
from tlog.supervisor.monitor import Monitor, Thresholds
from tlog.supervisor.nvml import NvmlGateway
from tlog.supervisor.options import RunOptions, decide_status, git_info
from tlog.supervisor.scrape import make_scraper
from tlog.views.viewstate import ViewState

MEMORY_TIMELINE_S = 30.0
# faulthandler dumps every thread's stack on it in a hooked child (hang detection is on by default): a real-time
# signal where there is one, so that a scheduler's SIGUSR1 (Slurm's --signal) keeps its own meaning
STACK_SIGNAL_NAME = "SIGRTMIN+3" if hasattr(signal, "SIGRTMIN") else "SIGUSR1"
STACK_SIGNAL = signal_number(STACK_SIGNAL_NAME)


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
        self.machine = restart.Machine()
        self.checkpoints = restart.Checkpoints(opts.checkpoint_glob)
        self.workers = ranks.Workers()
        self.node = opts.dist.node if opts.dist is not None else None
        self._readers: list[StreamReader] = []
        self.recovery: restart.RecoveryWatch | None = None
        self.hangs: hang.HangWatch | None = None
        self.page: LivePage | None = None  # the attempt's live page (tlog.hook.live)
        self.hang_rule = hang.HangRule.of(opts.hang_timeout)  # None: --hang-timeout 0
        self._wake = threading.Event()
        self.scraper = make_scraper(opts.scrape)
        self.live = None  # --export tensorboard:DIR (tlog.export.live), made in prepare
        self.tree: proctree.RunTree | None = None

    # -- setup --------------------------------------------------------------------------
    def prepare(self) -> Path:
        """Validate the target and claim the experiment directory (errors are LaunchError/ExperimentError)."""
        opts = self.opts
        if opts.is_command:
            self.argv = launch.command_argv(list(opts.target))
        else:
            self.argv = launch.script_argv(opts.target[0], list(opts.target[1:]))
        name = opts.name or opts.default_name()
        if opts.dist is not None:
            self.argv = opts.dist.argv(opts.target[0], list(opts.target[1:]), name)
        safefile.FAULTS.report = lambda text: self.display.message(text)  # noqa: PLW0108 - display set below
        if self.node is None:
            exp_dir, suffixed = layout.create_experiment_dir(Path(opts.log_dir), name)
        else:  # one node of several: they share the experiment, each with its own files
            exp_dir, suffixed = layout.join_experiment_dir(Path(opts.log_dir), name, self.node), False
        if suffixed:
            self.display.message(f"experiment {name!r} exists; this run is {exp_dir.name!r}")
        self.exp_dir = exp_dir
        self.writer = ExperimentWriter(exp_dir, node=self.node, keep_secrets=opts.keep_secrets,
                                       ranked=opts.dist is not None or torchrun.is_launcher(self.argv))
        self.state.name = exp_dir.name
        self.state.command = " ".join(self.argv)
        self.display = make_display(self.state, quiet=opts.quiet, panel=opts.panel,
                                    status_every=opts.status_every)
        self.notifier = notify.Notifier(opts.notify, opts.notify_url, self.writer.message)
        if opts.export_live:
            from tlog.export.live import LiveTensorBoard

            self.live = LiveTensorBoard(Path(opts.export_live), exp_dir.name,
                                        ranked=opts.dist is not None or torchrun.is_launcher(self.argv))
        return exp_dir

    def emit(self, kind: str, data: dict, **context: object) -> None:
        """An event of the supervisor's own, into the same stream as the child's."""
        event = {"kind": kind, "t": time.time(), "attempt": self.attempt, **context, "data": data}
        if self.node is not None:
            event["node"] = self.node
        self.writer.write_events([event])
        self.writer.flush()
        if self.live is not None:
            self.live.feed([event])
        self.state.apply(event)

    def say(self, text: str) -> None:
        self.display.message(text)
        if self.writer is not None:
            self.writer.message(text)

    # -- child callbacks (reader threads) ------------------------------------------------
    def on_events(self, events: list[dict]) -> None:
        attempt, node, start = self.attempt, self.node, 0
        for i, event in enumerate(events):
            kind = event["kind"]
            if kind == "meta" and "rank" in event and self.workers.joined(event):
                self._deliver(events[start:i])  # the old round's events keep their attempt
                start = i
                self._torchrun_restarted(event)
                attempt = self.attempt
            event["attempt"] = attempt
            if node is not None:
                event["node"] = node
            if kind == "crash":
                self.crash = event
                self.workers.crashed(event)
            elif kind == "checkpoint":
                self.checkpoints.seen(event)
            elif kind == "meta" and "rank" in event and self.monitor is not None:
                self.monitor.ranks = self.workers.pids()
        self._deliver(events[start:] if start else events)

    def _deliver(self, events: list[dict]) -> None:
        if not events:
            return
        self.writer.write_events(events)
        if self.live is not None:
            self.live.feed(events)
        if self.hangs is not None:
            self.hangs.observe(events)
        if self.recovery is not None and (t := self.recovery.passed(events)) is not None:
            self._resolve_recovery(True, t)
        if self.display.wants_state:
            apply = self.state.apply
            for event in events:
                apply(event)

    def on_output(self, stream: str, lines: list[str]) -> None:
        self.writer.write_output("|" if stream == "stdout" else "!", lines)
        if stream == "stderr" and self.workers.by_rank:
            self.workers.report.feed(lines)  # torchrun's account of its workers' exits
        if self.scraper is not None and (scraped := self.scraper.scan(lines)):
            self.on_events(scraped)
        if self.hangs is not None:
            self.hangs.feed(stream, lines)
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
        previous = launch.install_handlers(self._on_signal, scheduler.extra_signals())
        status = "failed"
        nvml = NvmlGateway(on_warning=self.writer.message)  # no GPU is normal: a note in training.log
        self.monitor = Monitor(os.getpid(), interval=self.opts.monitor_interval, window=self.opts.monitor_window,
                               on_sample=self.on_sample, on_warning=self.on_warning, nvml=nvml,
                               thresholds=Thresholds.from_seed(self.opts.settings.get("monitoring_thresholds")))
        self.monitor.baseline()
        proctree.become_subreaper()  # the run's orphans stay findable (and are reaped) here
        guardian = Guardian()  # ends the run if tlog dies
        self.tree = proctree.RunTree(lambda sid, start: self._new_session(guardian, sid, start))
        try:
            with self.display:
                result = self._supervise()
            status = result.status
            return result.exit_code
        finally:
            self.tree.kill()
            self.tree.stop()
            guardian.close()
            launch.restore_handlers(previous)
            self._close_page()
            self.monitor.stop()
            nvml.close()
            summary = self.writer.close(status)
            if self.live is not None:
                self.live.close()
            self._farewell(summary)
            self._notify_end(summary)

    def _record_start(self) -> None:
        git = git_info(self._script_dir())
        self.emit("meta", {"host": platform.node(), "tlog": tlog.__version__, "supervisor_pid": os.getpid(),
                           "command": list(self.argv), "cwd": os.getcwd(), **git})
        settings = asdict(self.opts)
        settings["target"] = list(self.opts.target)
        self.emit("config", {"tlog": settings, "command": list(self.argv),
                             **({"git": {"commit": git["git_commit"], "dirty": git["git_dirty"]}} if git else {})})
        self.say(f"experiment {self.exp_dir.name} -> {self.exp_dir}")

    def _script_dir(self) -> str:
        if self.opts.is_command:
            return os.getcwd()
        return os.path.dirname(os.path.abspath(self.opts.target[0]))

    def _child_env(self, attempt: int, resume: restart.ResumePoint | None) -> dict[str, str]:
        extra = {"TLOG_EXPERIMENT": self.exp_dir.name, "TLOG_EXP_DIR": str(self.exp_dir.resolve()),
                 "TLOG_ATTEMPT": str(attempt), **self.opts.extra_env}
        if not self.opts.instrument:
            extra["TLOG_NO_INSTRUMENT"] = "1"
        extra["TLOG_LOG_EVERY"] = str(self.opts.log_every)
        extra["TLOG_GRAD_NORM"] = str(self.opts.grad_norm)
        if self.hang_rule is not None:
            extra[ENV_STACK_SIGNAL] = STACK_SIGNAL_NAME
        if self.page is not None:
            extra.update(self.page.env)
        return launch.child_env({**extra, **restart.resume_env(resume)})

    def _supervise(self) -> AttemptResult:
        """Drive the restart machine: attempts until one finishes or the policy (or the user) stops."""
        policy = self.opts.restart_policy
        while True:
            self.machine = restart.transition(self.machine, restart.Started(), policy)
            result = self._run_attempt(self.attempt + 1)  # torchrun's own restarts are attempts too
            if self.machine.state is not restart.State.BACKING_OFF:
                return result
            self.notifier.send(notify.outcome("restarting", self.exp_dir.name, str(self.exp_dir.resolve()),
                                              self.state.step, result.exit_code, result.error))
            if not self._back_off():
                reason = "interrupted while waiting to restart"
                self.machine = restart.transition(self.machine, restart.Cancelled(reason), policy)
                self.emit("attempt", {"event": "stop", "attempt": result.attempt, "status": result.status,
                                      "stop_reason": reason})
                self.say(f"{reason}: not restarting")
                return result
            self.machine = restart.transition(self.machine, restart.Waited(), policy)

    def _back_off(self) -> bool:
        """Announce the restart and wait its delay; False when a signal asked tlog to stop meanwhile."""
        m, policy = self.machine, self.opts.restart_policy
        self.emit("restart", {"attempt": self.attempt + 1, "max_attempts": policy.max_attempts,
                              "reason": m.reason, "delay_s": m.delay_s})
        self.say(f"restarting (attempt {self.attempt + 1} of {policy.max_attempts}) in {m.delay_s:g} s: {m.reason}")
        if self.pending_signal is None:
            self._wake.wait(m.delay_s)
        return self.pending_signal is None

    def _run_attempt(self, attempt: int) -> AttemptResult:
        self.attempt = attempt
        self.crash = None
        self.workers = ranks.Workers()
        self.monitor.ranks = {}
        self.oom_before = oom_kill_count()
        resume = self.checkpoints.resume_point() if attempt > 1 else None
        argv = (*self.argv, *restart.resume_args(self.opts.resume_arg, resume))
        if attempt > 1 and resume is None:
            self.say(f"no checkpoint to resume from: attempt {attempt} starts from the beginning")
        self._close_page()
        self.page = LivePage.open()  # one per attempt: a restart never shows the steps of the attempt before
        proc = launch.spawn(launch.ChildSpec(argv, self._child_env(attempt, resume)))
        self.tree.adopt(proc.pid)
        self.monitor.pid = proc.pid
        self.monitor.start()
        self.signaller = launch.GroupSignaller(proc.pid, self.opts.grace, self.say, self.tree.kill)
        self.emit("attempt", {"event": "start", "attempt": attempt, "pid": proc.pid, "argv": list(argv),
                              "max_attempts": self.opts.restart_policy.max_attempts,
                              **({"resume_checkpoint": resume.path, "resume_step": resume.step} if resume else {})})
        if self.pending_signal is not None:
            self.signaller.forward(self.pending_signal)
        if self.hang_rule is not None:
            self.hangs = hang.HangWatch(self.hang_rule, self.signaller, self.say, STACK_SIGNAL,
                                        live=self.page,
                                        on_limit=self.state.set_hang_limit)
            self.hangs.start()
        readers = self._readers = start_readers(proc, self.on_events, self.on_output, self.display,
                                                self.writer.flush)
        returncode = proc.wait()
        self.signaller.cancel()
        if self.hangs is not None:
            self.hangs.stop()
        drain(readers, self.tree.kill, self.say)
        self.tree.stop()
        return self._finish_attempt(self.attempt, returncode, readers)  # torchrun may have started more

    def _finish_attempt(self, attempt: int, returncode: int, readers: list[StreamReader]) -> AttemptResult:
        exit_code, sig = launch.exit_status(returncode)
        forwarded = self.signaller.forwarded if self.signaller else None
        hung = self.hangs is not None and self.hangs.fired
        oom_delta = options.oom_delta(self.oom_before, oom_kill_count())
        status = decide_status(exit_code, sig, forwarded, oom_delta, hung=hung)
        if status == "killed" and forwarded is not None and not hung:
            status = scheduler.outcome(forwarded) or status  # Slurm's preemption or time limit, not the user
        if self.recovery is not None:
            self._resolve_recovery(status == "finished", time.time())
        error = None
        if status != "finished" and (forwarded is None or hung):
            error = self._error_record(attempt, exit_code, sig, readers, oom_delta)
            if status == "killed" and sig == signal.SIGKILL and error["category"] == "memory":
                status = "oom-killed"  # no cgroup counter, but RSS at the limit says the OOM killer
        ended = restart.Exited(restart.Failure.of(status, error, forwarded, hung))
        self.machine = restart.transition(self.machine, ended, self.opts.restart_policy)
        exit_data = {"event": "exit", "attempt": attempt, "exit_code": exit_code, "signal": sig,
                     "signal_name": launch.signal_name(sig) or None, "status": status,
                     "oom_kill_delta": oom_delta,
                     "last_step": self._position(0 if self.workers.distributed else None)["step"],
                     "peaks": self.monitor.peaks(),
                     "malformed_events": sum(reader.splitter.malformed for reader in readers) or None}
        if error is not None:
            exit_data["cause"] = error["cause"]
        if forwarded is not None:
            exit_data["forwarded_signal"] = launch.signal_name(forwarded)
        if self.machine.state.final and self.machine.reason:
            exit_data["stop_reason"] = self.machine.reason
            self.say(self.machine.reason)
        elif self.machine.state is restart.State.BACKING_OFF:
            exit_data["next"] = "restart"
        self.emit("attempt", {k: v for k, v in exit_data.items() if v is not None})
        if self.machine.state is restart.State.BACKING_OFF and error is not None:
            self.recovery = restart.RecoveryWatch(error, time.time())
        self.signaller = self.hangs = None
        return AttemptResult(attempt, exit_code, sig, status, error)

    def _resolve_recovery(self, successful: bool, t: float) -> None:
        """Amend the previous attempt's error record: did this attempt get past the step where it failed?"""
        watch, self.recovery = self.recovery, None
        update = failure.recovery_update(watch.error, successful=successful, recovered_t=t, failed_t=watch.failed_t)
        self.emit("error", update)
        if successful:
            past = f"past step {watch.step}" if watch.step is not None else "through"
            self.say(f"attempt {self.attempt} got {past}: recovered from the attempt {watch.error['attempt']} "
                     f"failure in {update['recovery_time']:g} s")

    def _error_record(self, attempt: int, exit_code: int, sig: int | None, readers: list[StreamReader],
                      oom_delta: int | None) -> dict:
        """Classify the failure from everything known now (in a distributed run, its root-cause rank's), and
        record it."""
        stderr = next(r for r in readers if r.stream == "stderr")
        hangs = self.hangs
        blame = ranks.blame(self.workers, self.crash, list(stderr.tail), exit_code, sig,
                            hangs.stack if hangs is not None else None, hangs.stacks if hangs is not None else {})
        position = self._position(blame.fields.get("rank"))
        record = failure.failure_record(
            blame.crash, exit_code=None if blame.signal else blame.exit_code, signal=blame.signal,
            stderr_tail=blame.stderr, phase=position["phase"], position=position,
            samples=self.monitor.recent(MEMORY_TIMELINE_S), oom_kill_delta=oom_delta, hang_stack=blame.hang_stack)
        node = "" if self.node is None else f"-node{self.node}"
        error = failure.error_record(record, attempt=attempt, error_id=f"attempt-{attempt}{node}")
        error.update(blame.fields, **({"node": self.node} if node else {}))
        error["peaks"] = self.monitor.peaks()
        error["memory_timeline"] = [{k: r.get(k) for k in ("t", "rss_mb", "headroom_mb", "mem_limit_mb")}
                                    for r in record.samples]
        self.emit("error", error, step=record.step, epoch=record.epoch, batch=record.batch)
        return error

    def _close_page(self) -> None:
        if self.page is not None:
            self.page.close()
            self.page = None

    def _position(self, rank: int | None) -> dict:
        """Where the run (or ``rank``) is: the last event's position, brought up to the live page, which knows
        the steps run since the last report (a native crash, a kill or a hang between reports)."""
        position = self.writer.position()
        if self.page is None:
            return position
        return merge(position, self.page.of_rank(rank))

    def _torchrun_restarted(self, event: dict) -> None:
        """torchrun restarted its workers (its own ``--max-restarts``): the round that failed is an attempt
        with its error record, and the new round the next attempt, which the recovery watch follows."""
        count = event["data"].get("restart_count")
        error = self._error_record(self.attempt, 1, None, self._readers, None)
        self.emit("attempt", {"event": "exit", "attempt": self.attempt, "status": "failed", "by": "torchrun",
                              "cause": error["cause"], "next": "restart"})
        reason = f"torchrun restarted its workers (its restart {count}) after: {error['cause']}"
        self.emit("restart", {"attempt": self.attempt + 1, "reason": reason, "by": "torchrun", "delay_s": 0})
        self.say(reason)
        self.workers.next_round(count)
        self.workers.joined(event)
        self.attempt += 1
        self.crash = None
        self.emit("attempt", {"event": "start", "attempt": self.attempt, "by": "torchrun", "restart_count": count,
                              "pid": self.monitor.pid})
        self.recovery = restart.RecoveryWatch(error, time.time())

    def _new_session(self, guardian: Guardian, sid: int, start: int) -> None:
        """A session of the run: the guardian must know it; one a descendant started goes to training.log."""
        guardian.session(sid, start)
        if self.tree.child is not None and sid != self.tree.child.pid:
            self.writer.message(f"process {sid} of the run started a session of its own; it ends with the run")

    def _on_signal(self, signum: int) -> None:
        if self.signaller is None:
            self.pending_signal = signum
            self._wake.set()  # a restart waiting out its backoff does not happen
        else:
            self.signaller.forward(signum)

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
        self.display.message(" | ".join(p for p in parts if p))
        errors = summary.get("errors", {}).get("items") or []
        if errors and status != "finished":
            last = errors[-1]
            self.display.message(f"{last.get('category')}: {last.get('cause')}")
            if last.get("remedy"):
                self.display.message(f"remedy: {last['remedy']}")
