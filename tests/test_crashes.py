"""Real training scripts crashing in each phase a CPU can produce, diagnosed by ``tlog run``; plus the
failure record and status rules alone, and ``tlog classify``."""

from __future__ import annotations

import json
import signal

import pytest
from conftest import Runner, script

from tlog.diagnosis import failure
from tlog.supervisor.limits import oom_kill_count
from tlog.supervisor.options import decide_status, diagnosed_status

SEED_FIELDS = ("category", "phase", "error_message", "timestamp", "epoch", "batch", "recovery_attempted",
               "recovery_successful", "recovery_time")
TLOG_FIELDS = ("id", "traceback", "attempt", "exit_code", "signal", "transient", "cause", "evidence", "step")

# mode: (tlog's exit code, status, category, phase(s), step, batch, fragments of the cause, start of the message)
CASES = {
    "worker": (1, "failed", "data_loading", {"data_loading"}, 2, 1,
               ("KeyError", "'sample 8 missing from the shard index'", "crash_phase.py"),
               "KeyError: Caught KeyError in DataLoader worker process 0."),
    "shape": (1, "failed", "model_inference", {"forward_pass"}, 2, 2,
              ("in forward", "mat1 and mat2 shapes cannot be multiplied (4x6 and 8x16)"),
              "RuntimeError: mat1 and mat2 shapes cannot be multiplied (4x6 and 8x16)"),
    # The probe's phase says forward_pass; the frames show the loss function, which is finer.
    "target": (1, "failed", "loss_computation", {"loss_computation"}, 2, 2,
               ("Target 10 is out of bounds",), "IndexError: Target 10 is out of bounds."),
    "backward": (1, "failed", "gradient_computation", {"backward_pass"}, 2, 2,
                 ("in backward", "Trying to backward through the graph a second time"),
                 "RuntimeError: Trying to backward through the graph a second time"),
    "optimizer": (1, "failed", "configuration", {"initialization"}, None, None,
                  ("wrong type", "'<' not supported between instances of 'str' and 'float'"),
                  "TypeError: '<' not supported between instances of 'str' and 'float'"),
    # A load before the first step: initialization, not checkpoint saving.
    "ckpt": (1, "failed", "checkpoint", {"initialization"}, None, None,
             ("failed finding central directory",),
             "RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory"),
    "args": (2, "failed", "configuration", {"unknown", "initialization"}, None, None,
             ("unrecognized arguments: --no-such-option",),
             "crash_phase.py: error: unrecognized arguments: --no-such-option"),
    "segv": (139, "killed", "system", {"unknown", "backward_pass", "forward_pass"}, 3, 2,
             ("Segmentation fault",), "native crash"),
}


def _errors(runner: Runner, name: str) -> list[dict]:
    return json.loads((runner.exp(name) / "training_errors.json").read_text())


def _summary(runner: Runner, name: str) -> dict:
    return json.loads((runner.exp(name) / "training_summary.json").read_text())


@pytest.mark.parametrize("mode", list(CASES))
def test_crash_in_each_phase_is_diagnosed(runner: Runner, mode: str) -> None:
    code, status, category, phases, step, batch, fragments, message = CASES[mode]
    extra = ("--restart", "on-failure") if mode == "shape" else ()
    res = runner.run("run", "--name", mode, "--log-every", "1", *extra, script("crash_phase.py"), mode)
    assert res.returncode == code, res.stderr
    errors = _errors(runner, mode)
    assert len(errors) == 1
    err = errors[0]
    assert set(SEED_FIELDS + TLOG_FIELDS) <= set(err), set(SEED_FIELDS + TLOG_FIELDS) - set(err)
    assert (err["category"], err["step"], err["batch"], err["attempt"], err["id"]) == \
        (category, step, batch, 1, "attempt-1")
    assert err["phase"] in phases
    for fragment in fragments:
        assert fragment in err["cause"], (fragment, err["cause"])
    assert err["error_message"].startswith(message), err["error_message"]
    assert (err["recovery_attempted"], err["recovery_successful"], err["recovery_time"]) == (False, False, None)
    assert err["transient"] is (category == "system")
    assert err["evidence"] and err["traceback"]
    assert err["exit_code"] == (None if code > 128 else code)
    assert err["signal"] == (code - 128 if code > 128 else None)
    summary = _summary(runner, mode)
    assert (summary["status"], summary["outcome"], summary["restarts"]) == (status, status, 0)
    assert summary["errors"]["by_category"] == {category: 1}
    assert f"{category}: {err['cause']}" in res.stderr, "the farewell line names the diagnosis"
    if mode == "shape":  # asked to restart, but a bug would fail the same way: one line says why not
        reason = ("not restarting: model_inference failures are not transient (a restart would likely fail the "
                  "same way); --restart-on all or --restart-on model_inference retries them")
        assert f"[tlog] {reason}" in res.stderr and summary["stop_reason"] == reason
    if mode == "segv":  # faulthandler's Python stack reached stderr and the record
        assert "Fatal Python error: Segmentation fault" in err["traceback"]
        assert 'crash_phase.py", line' in err["traceback"]


def test_a_kill_after_a_finished_save_is_not_blamed_on_checkpointing(runner: Runner) -> None:
    """The save returned, so the phase it entered is over: the kill happened in training."""
    res = runner.run("run", "--name", "savekill", script("crash_phase.py"), "savekill")
    assert res.returncode == 128 + signal.SIGKILL and "STEP 3" in res.stdout
    (err,) = _errors(runner, "savekill")
    assert (err["signal"], err["step"]) == (signal.SIGKILL, 3)
    assert err["phase"] != "checkpoint_saving" and "checkpoint" not in err["cause"], err
    phases = [e["data"]["phase"] for e in runner.events("savekill") if e["kind"] == "phase"]
    assert phases[-2] == "checkpoint_saving" and phases[-1] != "checkpoint_saving", phases


def test_sigkill_is_told_from_the_oom_killer_with_the_memory_timeline(runner: Runner) -> None:
    res = runner.run("run", "--name", "kill", "--monitor-interval", "0.1", "--log-every", "1",
                     script("crash_phase.py"), "sigkill")
    assert res.returncode == 128 + signal.SIGKILL
    assert "STEP 3" in res.stdout
    err = _errors(runner, "kill")[0]
    counter = oom_kill_count()
    assert (err["signal"], err["category"], err["step"], err["transient"]) == (signal.SIGKILL, "system", 3, True)
    assert err["cause"].startswith("killed by SIGKILL (not the OOM killer: ")
    assert err["error_message"] == err["cause"]
    assert err["evidence"][0] == ("oom_kill counter unavailable" if counter is None else "oom_kill counter +0")
    timeline = err["memory_timeline"]
    assert all(p["rss_mb"] > 0 for p in timeline), "readings of the live process tree only"
    assert timeline[-1]["rss_mb"] > 100, "the last reading is of the trainer with torch loaded"
    assert [p["t"] for p in timeline] == sorted(p["t"] for p in timeline)
    assert set(timeline[0]) == {"t", "rss_mb", "headroom_mb", "mem_limit_mb"}
    summary = _summary(runner, "kill")
    assert summary["status"] == "killed" and summary["attempts"][0]["signal_name"] == "SIGKILL"
    assert [int(line.split()[1]) for line in res.stdout.splitlines() if line.startswith("STEP")] == [1, 2, 3]
    assert summary["steps"] == 3, "every step emitted before the kill is on disk"


# -- the record and the status, without processes -----------------------------------------------

def _samples(rss_mb: list[float], limit_mb: float) -> list[dict]:
    return [{"t": 100.0 + i, "rss_mb": r, "mem_limit_mb": limit_mb, "headroom_mb": limit_mb - r, "nprocs": 2}
            for i, r in enumerate(rss_mb)] + [{"t": 110.0, "rss_mb": 0.0, "mem_limit_mb": limit_mb, "nprocs": 0}]


def test_oom_killer_counter_makes_a_memory_failure() -> None:
    record = failure.failure_record(None, exit_code=None, signal=9, samples=_samples([1000, 3000, 3900], 4096),
                                    oom_kill_delta=1, position={"step": 40, "epoch": 1, "batch": 7})
    assert [s["rss_bytes"] for s in record.samples] == [1000 << 20, 3000 << 20, 3900 << 20], \
        "megabytes converted for the classifier; the reading after the death is dropped"
    err = failure.error_record(record, attempt=2)
    assert (err["category"], err["transient"], err["rule"], err["step"], err["id"]) == \
        ("memory", True, "sigkill_oom_counter", 40, "attempt-2")
    assert err["cause"].startswith("killed by the kernel OOM killer at epoch 1, batch 7")
    assert "3.81 GiB" in err["cause"] and "4.00 GiB limit" in err["cause"] and "95%" in err["cause"]


def test_without_a_counter_rss_at_the_limit_still_points_to_the_oom_killer() -> None:
    near = failure.failure_record(None, exit_code=None, signal=9, samples=_samples([3000, 4000], 4096))
    assert failure.error_record(near, attempt=1)["rule"] == "sigkill_rss_near_limit"
    far = failure.failure_record(None, exit_code=None, signal=9, samples=_samples([300, 400], 4096))
    assert failure.error_record(far, attempt=1)["category"] == "system"


def test_error_message_prefers_the_exception_then_the_last_line() -> None:
    crash = {"kind": "crash", "step": 3, "data": {"type": "ValueError", "message": "bad", "traceback": "Tb"}}
    assert failure.error_record(failure.failure_record(crash, exit_code=1, signal=None), attempt=1)[
        "error_message"] == "ValueError: bad"
    plain = failure.failure_record(None, exit_code=3, signal=None, stderr_tail=["starting", "fatal: no GPU", ""])
    assert failure.error_record(plain, attempt=1)["error_message"] == "fatal: no GPU"


def test_recovery_update_is_an_amendment_of_the_record() -> None:
    update = failure.recovery_update({"id": "attempt-1"}, successful=True, recovered_t=105.25, failed_t=100.0)
    assert update == {"update_of": "attempt-1", "recovery_attempted": True, "recovery_successful": True,
                      "recovery_time": 5.25}
    assert failure.recovery_update({"id": "x"}, successful=False)["recovery_time"] is None


@pytest.mark.parametrize(("args", "status"), [
    ((0, None, None, None), "finished"),
    ((1, None, None, None), "failed"),
    ((137, 9, None, 1), "oom-killed"),
    ((137, 9, None, 0), "killed"),
    ((137, 9, 15, 1), "killed"),
    ((143, 15, None, None), "killed"),
    ((130, None, 2, None), "killed"),
])
def test_status_from_the_exit(args: tuple, status: str) -> None:
    assert decide_status(*args) == status
    assert decide_status(*args, hung=True) == "hung"


def test_a_sigkill_with_memory_at_its_limit_is_the_oom_killers() -> None:
    assert diagnosed_status("killed", 9, "memory") == "oom-killed"
    assert diagnosed_status("killed", 15, "memory") == diagnosed_status("killed", 9, "system") == "killed"


# -- tlog classify ----------------------------------------------------------------------------------

TRACEBACK = """\
Epoch 3: 100%|##########| 50/50
Traceback (most recent call last):
  File "/home/me/train.py", line 88, in <module>
    out = model(x)
  File "/usr/lib/python3.11/site-packages/torch/nn/modules/linear.py", line 125, in forward
    return F.linear(input, self.weight, self.bias)
RuntimeError: mat1 and mat2 shapes cannot be multiplied (32x100 and 128x10)
srun: error: node17: task 0: Exited with exit code 1
"""


def test_classify_a_log_file_and_stdin(runner: Runner) -> None:
    log = runner.cwd / "slurm-123.out"
    log.write_text(TRACEBACK)
    res = runner.run("classify", str(log))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["category", "model_inference"]
    assert lines[2].split()[:2] == ["restart", "deterministic"]
    assert "mat1 and mat2 shapes cannot be multiplied (32x100 and 128x10)" in res.stdout
    as_json = json.loads(runner.run("classify", "-", "--json", input=TRACEBACK).stdout)
    assert (as_json["category"], as_json["transient"]) == ("model_inference", False)
    missing = runner.run("classify", "nope.log")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope.log" in missing.stderr


def test_one_line_forward_and_backward_is_the_forward_with_a_remedy(runner: Runner) -> None:
    """The user's line says .backward(), the torch.nn frames below it say the forward failed; the remedy names
    the layer and the shapes, at the end of the run, in training_errors.json and in ``tlog errors``."""
    res = runner.run("run", "--name", "oneline", script("one_line_step.py"))
    assert res.returncode == 1
    (err,) = _errors(runner, "oneline")
    assert (err["category"], err["phase"], err["transient"]) == ("model_inference", "forward_pass", False)
    remedy = "the input has 3 features but nn.Linear expects 4 (8x3 @ 4x2)"
    assert err["remedy"].startswith(remedy)
    assert f"remedy: {remedy}" in res.stderr
    assert f"remedy: {remedy}" in runner.run("errors", "oneline").stdout


def test_a_worker_killed_by_sigsegv_is_the_root_not_the_data_or_the_pipe(runner: Runner) -> None:
    """A DataLoader worker dies of SIGSEGV loading batch 2: the main process then sees a broken pipe, a reset
    connection or 'exited unexpectedly' (which one depends on timing); the worker's native crash is the cause."""
    res = runner.run("run", "--name", "workersegv", script("crash_phase.py"), "workersegv")
    assert res.returncode == 1 and "Unexpected segmentation fault encountered in worker" in res.stderr, res.stderr
    (err,) = _errors(runner, "workersegv")
    assert (err["category"], err["rule"], err["phase"], err["transient"]) == \
        ("system", "dataloader_worker_crashed", "data_loading", True), err["cause"]
    assert err["remedy"].startswith("a native crash in a worker") and "num_workers=0" in err["remedy"]
