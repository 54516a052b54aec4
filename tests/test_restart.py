"""Restarts: the state machine alone (pure), then real ``tlog run --restart on-failure`` runs."""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import Runner, script

from tlog.supervisor.restart import (
    Cancelled,
    Checkpoints,
    Exited,
    Failure,
    Machine,
    RecoveryWatch,
    RestartPolicy,
    ResumePoint,
    Started,
    State,
    Waited,
    check_template,
    resume_args,
    resume_env,
    signature,
    transition,
)

ON = RestartPolicy(on_failure=True, max_restarts=2, backoff_s=1.0, backoff_max_s=3.0)


def net(step: int | None, signature: str = "network/ConnectionResetError") -> Failure:
    return Failure("failed", "network", signature, step, cause="network error")


def running() -> Machine:
    return transition(Machine(), Started(), ON)


# -- the machine, without processes ---------------------------------------------------------------


def test_finished_attempt_ends_the_machine() -> None:
    m = transition(running(), Exited(None), ON)
    assert (m.state, m.attempt, m.restarts, m.reason) == (State.FINISHED, 1, 0, "")
    assert m.state.final


def test_transient_failure_backs_off_doubling_to_the_cap() -> None:
    m = transition(running(), Exited(net(5)), ON)
    assert (m.state, m.restarts, m.delay_s, m.reason) == (State.BACKING_OFF, 1, 1.0, "network error")
    m = transition(transition(m, Waited(), ON), Started(), ON)
    assert (m.state, m.attempt) == (State.RUNNING, 2)
    m = transition(m, Exited(net(9)), ON)
    assert (m.state, m.restarts, m.delay_s) == (State.BACKING_OFF, 2, 2.0)
    assert [ON.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 3.0]


def test_max_restarts_gives_up_with_the_reason() -> None:
    m = Machine(state=State.RUNNING, attempt=3, restarts=2, last=net(4))
    m = transition(m, Exited(net(7)), ON)
    assert m.state is State.GAVE_UP
    assert m.reason == "giving up after 2 restarts (--max-restarts 2)"


def test_same_failure_at_same_step_twice_is_a_crash_loop() -> None:
    m = Machine(state=State.RUNNING, attempt=2, restarts=1, last=net(6))
    assert transition(m, Exited(net(6, "network/TimeoutError")), ON).state is State.BACKING_OFF
    assert transition(m, Exited(net(8)), ON).state is State.BACKING_OFF
    looped = transition(m, Exited(net(6)), ON)
    assert looped.state is State.CRASH_LOOP
    assert looped.reason == ("crash loop: the same network failure (network/ConnectionResetError) at step 6 "
                             "twice in a row; not restarting")


def test_deterministic_failure_is_not_restarted_unless_asked() -> None:
    bug = Failure("failed", "model_inference", "model_inference/RuntimeError", 3)
    m = transition(running(), Exited(bug), ON)
    assert m.state is State.FAILED
    assert m.reason.startswith("not restarting: model_inference failures are not transient")
    assert "--restart-on all or --restart-on model_inference" in m.reason
    for restart_on in ("all", "model_inference,network"):
        policy = RestartPolicy.parse("on-failure", 3, restart_on, 0.1, 1.0)
        assert transition(transition(Machine(), Started(), policy), Exited(bug), policy).state is State.BACKING_OFF


def test_transient_category_left_out_of_restart_on_is_said_so() -> None:
    policy = RestartPolicy.parse("on-failure", 3, "memory", 0.1, 1.0)
    m = transition(transition(Machine(), Started(), policy), Exited(net(2)), policy)
    assert (m.state, m.reason) == (State.FAILED, "not restarting: network is not in --restart-on memory")


def test_never_policy_and_interruptions_stop_without_restart() -> None:
    never = RestartPolicy()
    m = transition(transition(Machine(), Started(), never), Exited(net(2)), never)
    assert (m.state, m.reason, never.max_attempts) == (State.FAILED, "", 1)
    stopped = Failure("killed", "system", "interrupted", None, interrupted=True)
    m = transition(running(), Exited(stopped), ON)
    assert (m.state, m.reason) == (State.FAILED, "stopped on request: not restarting")
    backing = transition(running(), Exited(net(1)), ON)
    m = transition(backing, Cancelled("interrupted while waiting to restart"), ON)
    assert (m.state, m.reason) == (State.FAILED, "interrupted while waiting to restart")


def test_impossible_transitions_raise() -> None:
    with pytest.raises(ValueError, match="Waited is not expected in state running"):
        transition(running(), Waited(), ON)
    with pytest.raises(ValueError, match="Started is not expected in state finished"):
        transition(Machine(state=State.FINISHED), Started(), ON)


@pytest.mark.parametrize(("args", "message"), [
    (("sometimes", 3, None, 1.0, 60.0), "--restart must be 'never' or 'on-failure', not 'sometimes'"),
    (("on-failure", -1, None, 1.0, 60.0), "--max-restarts, --backoff and --backoff-max cannot be negative"),
    (("on-failure", 3, "network,bogus", 1.0, 60.0), "--restart-on: unknown category bogus; use 'all' or"),
    (("on-failure", 3, ",", 1.0, 60.0), "--restart-on: unknown category (none given)"),
])
def test_policy_parse_refuses_bad_values(args: tuple, message: str) -> None:
    with pytest.raises(ValueError) as err:
        RestartPolicy.parse(*args)
    assert str(err.value).startswith(message)


def test_policy_defaults_follow_each_causes_verdict() -> None:
    """Without --restart-on the diagnosis decides per cause; --restart-on decides per category."""
    policy = RestartPolicy.parse("on-failure", 3, None, 1.0, 60.0)
    assert policy.restart_on is None and policy.max_attempts == 4
    oom = Failure("failed", "memory", "memory/torch.OutOfMemoryError", 3, transient=False, rule="cuda_oom")
    killed = Failure("killed", "memory", "memory/sigkill_oom_counter", 3, transient=True)
    nccl = Failure("failed", "network", "network/DistBackendError", 3, transient=True)
    bug = Failure("failed", "model_inference", "model_inference/RuntimeError", 3, transient=False)
    assert [policy.covers(f) for f in (oom, killed, nccl, bug)] == [False, True, True, False]
    m = transition(transition(Machine(), Started(), policy), Exited(oom), policy)
    assert (m.state, m.reason) == (State.FAILED, "not restarting: this memory failure (cuda_oom) would recur "
                                                 "until its cause is fixed; --restart-on memory retries it")
    memory = RestartPolicy.parse("on-failure", 3, "memory", 1.0, 60.0)
    assert memory.covers(oom) and not memory.covers(nccl)


def test_signature_is_category_and_exception_type() -> None:
    assert signature("network", {"error_message": "ConnectionResetError: [Errno 104] reset"}) \
        == "network/ConnectionResetError"
    assert signature("system", {"error_message": "killed by SIGKILL: RSS 3 GiB", "rule": "sigkill_external"}) \
        == "system/sigkill_external"


def test_resume_arguments_and_template_check() -> None:
    point = ResumePoint("/ck/step 4.pt", 4)
    assert resume_args("--resume {checkpoint} --start-step {step}", point) == \
        ["--resume", "/ck/step 4.pt", "--start-step", "4"]
    assert resume_args("--resume {checkpoint}", None) == []
    assert resume_args(None, point) == []
    assert resume_env(point) == {"TLOG_RESUME_CHECKPOINT": "/ck/step 4.pt", "TLOG_RESUME_STEP": "4"}
    assert resume_env(ResumePoint("/ck/x.pt", None)) == {"TLOG_RESUME_CHECKPOINT": "/ck/x.pt"}
    assert resume_env(ResumePoint("/ck/x.pt", 12, 3)) == {"TLOG_RESUME_CHECKPOINT": "/ck/x.pt",
                                                          "TLOG_RESUME_STEP": "12", "TLOG_RESUME_EPOCH": "3"}
    assert resume_env(None) == {}
    with pytest.raises(ValueError, match="must contain"):
        check_template("--resume")
    with pytest.raises(ValueError, match="--resume-arg: No closing quotation"):
        check_template("--resume '{checkpoint}")


def test_checkpoint_choice_newest_event_or_newest_glob_match(tmp_path: Path) -> None:
    old, new = tmp_path / "a.pt", tmp_path / "b.pt"
    old.write_bytes(b"1")
    new.write_bytes(b"2")
    os.utime(old, (time.time() - 60, time.time() - 60))
    seen = Checkpoints()
    assert seen.resume_point() is None
    seen.seen({"kind": "checkpoint", "step": 8, "data": {"path": str(new)}})
    seen.seen({"kind": "checkpoint", "step": 4, "data": {"path": str(old)}})
    assert seen.resume_point() == ResumePoint(str(old), 4), "the newest announced, not the newest file"
    old.unlink()
    assert seen.resume_point() is None, "an announced checkpoint that is gone is not resumed from"
    by_glob = Checkpoints(str(tmp_path / "*.pt"))
    by_glob.seen({"kind": "checkpoint", "step": 8, "data": {"path": str(new)}})
    assert by_glob.resume_point() == ResumePoint(str(new), 8)
    assert Checkpoints(str(tmp_path / "*.ckpt")).resume_point() is None
    epochs = Checkpoints()
    epochs.seen({"kind": "checkpoint", "step": 8, "epoch": 1, "data": {"path": str(new), "epoch_complete": True}})
    assert epochs.resume_point() == ResumePoint(str(new), 8, 2), "an epoch-end checkpoint: the next epoch"
    epochs.seen({"kind": "checkpoint", "step": 6, "epoch": 1, "data": {"path": str(new), "epoch_complete": False}})
    assert epochs.resume_point() == ResumePoint(str(new), 6, 1), "mid-epoch: that epoch again"


def test_recovery_is_passing_the_failing_step() -> None:
    watch = RecoveryWatch({"id": "attempt-1", "step": 6, "attempt": 1}, failed_t=100.0)
    assert watch.passed([{"kind": "metrics", "step": 5, "t": 101.0}, {"kind": "metrics", "step": 6, "t": 102.0}]) \
        is None
    assert watch.passed([{"kind": "phase", "step": 7, "t": 103.0}, {"kind": "metrics", "step": 7, "t": 104.0}]) \
        == 104.0
    early = RecoveryWatch({"id": "attempt-1", "step": None, "attempt": 1}, failed_t=100.0)
    assert early.passed([{"kind": "metrics", "step": 1, "t": 101.5}]) == 101.5


def test_summary_and_error_records_follow_restarts_and_updates(tmp_path: Path) -> None:
    from tlog.store.writer import ExperimentWriter

    writer = ExperimentWriter(tmp_path / "exp")
    error = {"id": "attempt-1", "category": "network", "step": 6, "attempt": 1, "recovery_attempted": False,
             "recovery_successful": False, "recovery_time": None}
    writer.write_events([
        {"kind": "attempt", "t": 1.0, "data": {"event": "start", "attempt": 1, "pid": 10}},
        {"kind": "error", "t": 2.0, "data": error},
        {"kind": "attempt", "t": 2.0, "data": {"event": "exit", "attempt": 1, "status": "failed", "next": "restart",
                                               "last_step": 6}},
    ])
    assert writer.summary.result()["status"] == "restarting", "a live reader must not think the run is over"
    writer.write_events([
        {"kind": "restart", "t": 2.1, "data": {"attempt": 2, "reason": "network error", "delay_s": 0.1}},
        {"kind": "attempt", "t": 2.2, "data": {"event": "start", "attempt": 2, "pid": 11, "resume_step": 4}},
        {"kind": "error", "t": 3.0, "data": {"update_of": "attempt-1", "recovery_attempted": True,
                                             "recovery_successful": True, "recovery_time": 1.0}},
        {"kind": "error", "t": 3.0, "data": {"update_of": "no-such-id", "recovery_attempted": True}},
        {"kind": "attempt", "t": 4.0, "data": {"event": "exit", "attempt": 2, "status": "finished"}},
    ])
    summary = writer.close("finished")
    saved = json.loads((tmp_path / "exp" / "training_errors.json").read_text())
    assert len(saved) == 1, "updates amend, never add"
    assert (saved[0]["recovery_attempted"], saved[0]["recovery_successful"], saved[0]["recovery_time"]) == \
        (True, True, 1.0)
    assert (summary["status"], summary["outcome"], summary["restarts"], summary["errors"]["count"]) == \
        ("finished", "restarted-then-finished", 1, 1)
    assert summary["errors"]["items"][0]["recovery_successful"] is True
    assert [(a["attempt"], a["status"], a.get("resume_step")) for a in summary["attempts"]] == \
        [(1, "failed", None), (2, "finished", 4)]


# -- real runs -------------------------------------------------------------------------------------


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _json(path: Path) -> object:
    return json.loads(path.read_text())


def test_restart_resumes_from_checkpoint_and_continues_the_steps(runner: Runner) -> None:
    res = runner.run("run", "--name", "resume", "--log-every", "1", "--restart", "on-failure", "--backoff", "0.1",
                     "--resume-arg", "--resume {checkpoint}", script("resume_train.py"), "--flaky", "flag",
                     "--fail-at", "7")
    assert res.returncode == 0, res.stderr
    exp = runner.exp("resume")
    ck4 = str(runner.cwd / "ckpts" / "step4.pt")
    steps = [line.split() for line in res.stdout.splitlines() if line.startswith(("STEP", "RESUMED"))]
    assert [s[:2] for s in steps] == [["STEP", str(i)] for i in range(1, 7)] + [["RESUMED", "4"]] + \
        [["STEP", str(i)] for i in range(5, 9)]
    assert steps[6][2] == ck4, "tlog.resume_checkpoint() names the checkpoint the restart resumes from"
    first = {s[1]: s[2] for s in steps[:6]}
    assert {s[1]: s[2] for s in steps[7:] if s[1] in first} == {"5": first["5"], "6": first["6"]}, \
        "the model state was restored: the re-trained steps have the same losses"
    # Overlap rule: the failed attempt's rows stay; the resumed attempt writes steps 5.. again (no sawtooth to 1).
    rows = _rows(exp / "training_metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6, 5, 6, 7, 8]
    last = {int(r["step"]): float(r["loss"]) for r in rows}
    assert sorted(last) == list(range(1, 9)) and last[8] == float(steps[-1][2])

    events = runner.events("resume")
    attempts = [e["data"] for e in events if e["kind"] == "attempt"]
    assert [(a["event"], a["attempt"]) for a in attempts] == [("start", 1), ("exit", 1), ("start", 2), ("exit", 2)]
    assert attempts[0]["max_attempts"] == 4 and attempts[2]["argv"][-2:] == ["--resume", ck4]
    assert attempts[1]["next"] == "restart" and "next" not in attempts[3]
    assert (attempts[2]["resume_checkpoint"], attempts[2]["resume_step"]) == (ck4, 4)
    assert {e["attempt"] for e in events if e["kind"] == "metrics"} == {1, 2}
    restart = next(e["data"] for e in events if e["kind"] == "restart")
    assert restart["attempt"] == 2 and restart["delay_s"] == 0.1
    assert restart["reason"].startswith("network error")

    errors = _json(exp / "training_errors.json")
    assert len(errors) == 1
    err = errors[0]
    assert (err["category"], err["transient"], err["step"], err["attempt"]) == ("network", True, 6, 1)
    assert err["error_message"] == "ConnectionResetError: [Errno 104] Connection reset by peer while fetching shard 3"
    assert err["recovery_attempted"] is True and err["recovery_successful"] is True
    assert 0 < err["recovery_time"] < 60
    summary = _json(exp / "training_summary.json")
    assert (summary["status"], summary["outcome"], summary["restarts"], summary["steps"]) == \
        ("finished", "restarted-then-finished", 1, 8)
    assert [a["status"] for a in summary["attempts"]] == ["failed", "finished"]
    assert [a.get("last_step") for a in summary["attempts"]] == [6, 8]
    assert summary["errors"]["items"][0]["recovery_successful"] is True
    assert "restarting (attempt 2 of 4) in 0.1 s: network error" in res.stderr
    assert "attempt 2 got past step 6: recovered from the attempt 1 failure" in res.stderr
    shown = runner.run("summary", "resume")
    assert shown.stdout.startswith("resume  finished after 1 restart\n")


def test_max_restarts_respected_and_each_recovery_recorded(runner: Runner) -> None:
    res = runner.run("run", "--name", "flaky", "--restart", "on-failure", "--max-restarts", "2", "--backoff", "0.05",
                     "--backoff-max", "0.08", script("crash_loop.py"), "--fail-at", "3", "--advance")
    assert res.returncode == 1
    assert res.stdout.count("STEP 1") == 3, "three attempts"
    assert "restarting (attempt 2 of 3) in 0.05 s" in res.stderr
    assert "restarting (attempt 3 of 3) in 0.08 s" in res.stderr, "the backoff doubles, capped"
    assert "giving up after 2 restarts (--max-restarts 2)" in res.stderr
    errors = _json(runner.exp("flaky") / "training_errors.json")
    assert [(e["attempt"], e["step"], e["category"]) for e in errors] == [(1, 2, "network"), (2, 3, "network"),
                                                                          (3, 4, "network")]
    assert [(e["recovery_attempted"], e["recovery_successful"]) for e in errors] == \
        [(True, True), (True, True), (False, False)]
    summary = _json(runner.exp("flaky") / "training_summary.json")
    assert (summary["status"], summary["outcome"], summary["restarts"]) == ("failed", "failed", 2)
    assert summary["stop_reason"] == "giving up after 2 restarts (--max-restarts 2)"
    assert "failed after 2 restarts: giving up after 2 restarts (--max-restarts 2)" in \
        runner.run("summary", "flaky").stdout


def test_crash_loop_stops_even_when_every_category_may_restart(runner: Runner) -> None:
    res = runner.run("run", "--name", "loop", "--restart", "on-failure", "--restart-on", "all", "--backoff", "0.05",
                     script("crash_loop.py"), "--fail-at", "3", "--error", "value")
    assert res.returncode == 1
    reason = ("crash loop: the same unknown failure (unknown/ValueError) at step 2 twice in a row; "
              "not restarting")
    assert reason in res.stderr
    errors = _json(runner.exp("loop") / "training_errors.json")
    assert len(errors) == 2
    assert (errors[0]["recovery_attempted"], errors[0]["recovery_successful"], errors[0]["recovery_time"]) == \
        (True, False, None), "attempt 2 never got past step 2"
    summary = _json(runner.exp("loop") / "training_summary.json")
    assert (summary["status"], summary["restarts"], summary["stop_reason"]) == ("failed", 1, reason)


def test_deterministic_cuda_oom_is_not_retried_unless_asked(runner: Runner) -> None:
    """A CUDA OOM at a fixed batch size recurs: the default policy stops; --restart-on memory still retries."""
    base = ("--restart", "on-failure", "--max-restarts", "1", "--backoff", "0.05")
    res = runner.run("run", "--name", "oom", *base, script("crash_loop.py"), "--fail-at", "2", "--error", "cuda_oom",
                     "--advance")
    assert res.returncode == 1 and res.stdout.count("STEP 1") == 1, res.stderr
    reason = "not restarting: this memory failure (cuda_oom) would recur until its cause is fixed; " \
             "--restart-on memory retries it"
    assert f"[tlog] {reason}" in res.stderr
    (error,) = _json(runner.exp("oom") / "training_errors.json")
    assert (error["category"], error["rule"], error["transient"]) == ("memory", "cuda_oom", False)
    res = runner.run("run", "--name", "oom-asked", *base, "--restart-on", "memory", script("crash_loop.py"),
                     "--fail-at", "2", "--error", "cuda_oom", "--advance")
    assert res.returncode == 1 and res.stdout.count("STEP 1") == 2, res.stderr
    assert "restarting (attempt 2 of 2)" in res.stderr


def test_emfile_is_system_and_not_worth_a_restart(runner: Runner) -> None:
    res = runner.run("run", "--name", "fds", "--restart", "on-failure", script("crash_loop.py"), "--fail-at", "2",
                     "--error", "emfile")
    assert res.returncode == 1 and res.stdout.count("STEP 1") == 1, res.stderr
    (error,) = _json(runner.exp("fds") / "training_errors.json")
    assert (error["category"], error["rule"], error["transient"]) == ("system", "fd_limit", False)
    assert "Too many open files" in error["error_message"]


def test_signal_during_backoff_cancels_the_restart(runner: Runner) -> None:
    proc = runner.popen("run", "--name", "wait", "--restart", "on-failure", "--backoff", "30",
                        script("crash_loop.py"), "--fail-at", "2")
    line = ""
    deadline = time.monotonic() + 30
    while "restarting" not in line and time.monotonic() < deadline:
        line = proc.stderr.readline()
    assert "restarting (attempt 2 of 4) in 30 s" in line
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert time.monotonic() - started < 10, "the 30 s backoff was cut short"
    assert proc.returncode == 1
    assert "interrupted while waiting to restart: not restarting" in err
    summary = _json(runner.exp("wait") / "training_summary.json")
    assert (summary["status"], summary["restarts"], summary["stop_reason"]) == \
        ("failed", 0, "interrupted while waiting to restart")


@pytest.mark.parametrize(("args", "message"), [
    (("--restart", "always"), "tlog: error: --restart must be 'never' or 'on-failure', not 'always'"),
    (("--restart-on", "network,gpu"), "tlog: error: --restart-on: unknown category gpu; use 'all' or a comma"),
    (("--resume-arg", "--resume"), "tlog: error: --resume-arg must contain {checkpoint}"),
])
def test_bad_restart_options_are_one_line(runner: Runner, args: tuple[str, ...], message: str) -> None:
    res = runner.run("run", *args, script("crash_loop.py"))
    assert res.returncode == 2
    assert res.stderr.startswith(message) and res.stderr.count("\n") == 1
    assert not runner.log_dir.exists() or not any(runner.log_dir.iterdir()), "no experiment is created"
