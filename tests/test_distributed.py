"""torchrun jobs under tlog: real ``tlog run --nproc-per-node`` / ``-- torchrun`` runs of a DDP loop (gloo, CPU),
two simulated nodes writing one experiment, then the pure parts (argv, torchrun's report, root cause, rows)."""

from __future__ import annotations

import csv
import json
import platform
import socket
import sys
from pathlib import Path

import pytest
from conftest import Runner, clean_env, script
from rich.console import Console

from tlog.report import load_errors
from tlog.store import layout
from tlog.store.csvfile import CsvTable
from tlog.store.metrics_rows import MetricsRows
from tlog.supervisor import ranks, torchrun
from tlog.supervisor.nvml import DeviceReading, GpuProcess
from tlog.views.panel import render
from tlog.views.plot import PlotOptions, build_figure
from tlog.views.viewstate import ViewState
from tlog.views.watch import Watcher

TORCHRUN = (sys.executable, "-m", "torch.distributed.run")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def printed(stdout: str) -> dict[tuple[int, int], float]:
    """(rank, step) -> loss, from the script's "LOSS <rank> <step> <loss>" lines."""
    return {(int(p[1]), int(p[2])): float(p[3]) for p in (line.split() for line in stdout.splitlines())
            if p[:1] == ["LOSS"]}


def csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def summary(runner: Runner, name: str) -> dict:
    res = runner.run("summary", name, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def errors(runner: Runner, name: str) -> list[dict]:
    res = runner.run("errors", name, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


# -- real torchrun jobs ------------------------------------------------------------------------------


def test_ddp_run_records_every_rank_and_rank0_is_the_main_series(runner: Runner) -> None:
    res = runner.run("run", "--name", "ddp", "--log-every", "1", "--monitor-interval", "0.2", "--nproc-per-node", "2",
                     script("ddp_train.py"), "--steps", "6")
    assert res.returncode == 0, res.stderr
    losses = printed(res.stdout)
    assert sorted(losses) == [(r, s) for r in (0, 1) for s in range(1, 7)]
    exp = runner.exp("ddp")
    header, rows = csv_rows(exp / "training_metrics.csv")
    assert header[16:18] == ["step", "rank"], "the rank column is there from the first row"
    assert len(rows) == 12, "one row per (step, rank)"
    assert {(int(r["rank"]), int(r["step"])): float(r["loss"]) for r in rows} == losses
    events = runner.events("ddp")
    workers = [e for e in events if e["kind"] in ("metrics", "crash", "checkpoint", "phase")]
    assert workers and all((e["world_size"], e["local_rank"]) == (2, e["rank"]) for e in workers)
    agent = [e for e in events if e["kind"] == "meta" and "launcher" in e["data"]]
    assert [e["data"]["launcher"] for e in agent] == ["torchrun"], "the agent says once that it launched the run"
    assert not [e for e in events if e["kind"] in ("metrics", "config") and e.get("rank") is None
                and "tlog" not in e["data"]], "the agent never poses as a worker"
    _, system = csv_rows(exp / "system_metrics.csv")
    for rank in (0, 1):
        sampled = [r[f"rank{rank}_rss_mb"] for r in system if r.get(f"rank{rank}_rss_mb")]
        last_row = [r for r in rows if r["rank"] == str(rank)][-1]
        assert sampled and last_row["memory_usage"] == sampled[-1], "each rank's row carries its own memory"
    s = summary(runner, "ddp")
    assert s["metrics"]["loss"]["last"] == losses[(0, 6)] and s["steps"] == 6
    assert [(r["rank"], r["last_step"], r["loss"]) for r in s["ranks"]] == [(0, 6, losses[(0, 6)]),
                                                                            (1, 6, losses[(1, 6)])]
    assert s["samples_per_s"] == pytest.approx(sum(r["samples_per_s"] for r in s["ranks"]))
    text = runner.run("summary", "ddp").stdout
    table = text[text.index("ranks       2"):].splitlines()
    assert table[1].split() == ["rank", "host", "step", "loss", "steps/s", "RAM", "peak"]
    assert table[2].split()[:4] == ["0", platform.node(), "6", f"{losses[(0, 6)]:.4g}"]
    fig = build_figure([exp], PlotOptions(ranks=(), smoothing=0.0))
    lines = {line.get_gid(): line for ax in fig.axes for line in ax.get_lines() if line.get_gid()}
    for rank in (0, 1):
        drawn = lines[f"rank {rank}|loss|raw"]
        assert list(drawn.get_xdata()) == list(range(1, 7))
        assert list(drawn.get_ydata()) == [losses[(rank, s)] for s in range(1, 7)]


def test_torchrun_command_crash_of_rank1_is_the_root_cause_and_its_restart_an_attempt(runner: Runner) -> None:
    res = runner.run("run", "--name", "el", "--log-every", "1", "--", *TORCHRUN, "--nnodes", "1",
                     "--master-port", str(free_port()), "--nproc-per-node", "2", "--max-restarts", "1",
                     script("ddp_train.py"), "--crash-rank", "1", "--crash-step", "3", "--exit-after-restart")
    assert res.returncode == 0, res.stderr
    assert "RESTARTED 0" in res.stdout and "RESTARTED 1" in res.stdout
    (err,) = errors(runner, "el")
    assert (err["attempt"], err["rank"], err["root_cause_rank"]) == (1, 1, 1)
    assert (err["category"], err["phase"]) == ("model_inference", "forward_pass")
    assert err["error_message"] == "RuntimeError: mat1 and mat2 shapes cannot be multiplied (8x5 and 8x16)"
    (then,) = err["consequences"]
    assert then["rank"] == 0 and ("Connection closed by peer" in then.get("exception", "")
                                  or then.get("exit") == "terminated by torchrun (SIGTERM)")
    assert (err["recovery_attempted"], err["recovery_successful"]) == (True, True)
    s = summary(runner, "el")
    assert (s["status"], s["outcome"], s["restarts"]) == ("finished", "restarted-then-finished", 1)
    starts = [e for e in runner.events("el") if e["kind"] == "attempt" and e["data"]["event"] == "start"]
    assert [(e["data"]["attempt"], e["data"].get("by"), e["data"].get("restart_count")) for e in starts] == [
        (1, None, None), (2, "torchrun", 1)]
    text = runner.run("errors", "el").stdout
    assert "rank 1" in text and "root cause: rank 1" in text and "then rank 0" in text


def test_restart_resumes_the_whole_job_from_rank0_checkpoint(runner: Runner) -> None:
    res = runner.run("run", "--name", "rs", "--log-every", "1", "--restart", "on-failure", "--restart-on", "all",
                     "--backoff", "0", "--nproc-per-node", "2", script("ddp_train.py"), "--steps", "6",
                     "--save-every", "2", "--crash-rank", "1", "--crash-step", "5", "--fail-when", "fresh")
    assert res.returncode == 0, res.stderr
    ckpt = str(runner.cwd / "ckpts" / "step4.pt")
    resumed = sorted(line for line in res.stdout.splitlines() if line.startswith("RESUMED"))
    assert resumed == [f"RESUMED 0 4 {ckpt}", f"RESUMED 1 4 {ckpt}"]
    events = runner.events("rs")
    assert {e.get("rank") for e in events if e["kind"] == "checkpoint"} == {0}
    starts = [e["data"] for e in events if e["kind"] == "attempt" and e["data"]["event"] == "start"]
    assert (starts[1]["attempt"], starts[1]["resume_checkpoint"], starts[1]["resume_step"]) == (2, ckpt, 4)
    _, rows = csv_rows(runner.exp("rs") / "training_metrics.csv")
    steps = [(int(r["rank"]), int(r["step"])) for r in rows]
    assert steps.count((0, 6)) == 1 and steps.count((1, 5)) == 1 and (1, 5) in steps[8:], "resumed after step 4"
    (err,) = errors(runner, "rs")
    assert (err["attempt"], err["root_cause_rank"], err["category"]) == (1, 1, "model_inference")
    assert summary(runner, "rs")["outcome"] == "restarted-then-finished"


def test_a_peer_aborting_after_the_root_cause_does_not_change_its_verdict(runner: Runner) -> None:
    """What a loaded machine makes likely (gloo aborting the surviving rank as its group dies): rank 0's
    unprefixed "Fatal Python error: Aborted" on the shared stderr is not rank 1's shape error."""
    res = runner.run("run", "--name", "ab", "--log-every", "1", "--nproc-per-node", "2", script("ddp_train.py"),
                     "--steps", "4", "--crash-rank", "1", "--crash-step", "3", "--peer-aborts")
    assert res.returncode == 1 and "Fatal Python error: Aborted" in res.stderr, res.stderr
    (err,) = errors(runner, "ab")
    assert (err["root_cause_rank"], err["category"], err["step"]) == (1, "model_inference", 2)
    assert {"rank": 0, "exit_code": -6} in [{k: c.get(k) for k in ("rank", "exit_code")} for c in err["consequences"]]


def test_two_nodes_write_one_experiment_that_the_reports_merge(runner: Runner) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    procs = [runner.popen("run", "--name", "two", "--log-every", "1", "--nnodes", "2", "--node-rank", str(node),
                          "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
                          script("ddp_train.py"), "--steps", "4") for node in (0, 1)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    losses = {**printed(outs[0][0]), **printed(outs[1][0])}
    assert sorted(losses) == [(r, s) for r in (0, 1) for s in range(1, 5)]
    exp = runner.exp("two")
    for node, events in ((0, "events.jsonl"), (1, "events.node1.jsonl")):
        lines = [json.loads(line) for line in (exp / events).read_text().splitlines()]
        assert lines and {e.get("node") for e in lines} == {node}, "each node appends only its own files"
        assert (exp / layout.node_file("training.log", node)).stat().st_size > 0
        assert (exp / layout.node_file("training_metrics.csv", node)).is_file()
    s = summary(runner, "two")
    assert s["status"] == "finished" and s["metrics"]["loss"]["last"] == losses[(0, 4)]
    assert sorted((r["rank"], r["last_step"], r["loss"]) for r in s["ranks"]) == [
        (0, 4, losses[(0, 4)]), (1, 4, losses[(1, 4)])]
    assert {r["node"] for r in s["ranks"]} == {0, 1} and [n["node"] for n in s["nodes"]] == [1]
    assert errors(runner, "two") == []
    fig = build_figure([exp], PlotOptions(smoothing=0.0))
    (loss,) = [line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == "two|loss|raw"]
    assert list(loss.get_ydata()) == [losses[(0, s)] for s in range(1, 5)], "rank 0's curve, whichever node"
    again = runner.run("run", "--name", "two", "--nnodes", "2", "--node-rank", "1", "--nproc-per-node", "1",
                       "--rdzv-endpoint", endpoint, script("ddp_train.py"))
    assert again.returncode == 2 and "already has node 1's files" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_hang_of_one_rank_dumps_every_rank_and_blames_the_straggler(runner: Runner) -> None:
    # the calibrated limit (floor 2 s): start-up of two torch ranks on a loaded machine is never a hang
    res = runner.run("run", "--name", "hang", "--log-every", "1", "--grace", "15", "--nproc-per-node", "2",
                     script("ddp_train.py"), "--hang-rank", "1", "--hang-step", "3",
                     env=clean_env(TLOG_HANG_FLOOR_S="2"))
    assert res.returncode == 1, res.stderr  # torchrun's own status once tlog stopped it (SIGTERM)
    (err,) = errors(runner, "hang")
    assert (err["root_cause_rank"], err["step"]) == (1, 3)
    assert "ddp_train.py" in err["cause"] and err["cause"].startswith("hung")
    (then,) = err["consequences"]
    assert then["rank"] == 0 and then["exit"].startswith("waiting for its peers")
    assert "--- rank 0, pid" in err["traceback"] and "--- rank 1, pid" in err["traceback"]
    assert "_engine_run_backward" in err["traceback"], "rank 0 waits in DDP's all-reduce inside backward"
    assert summary(runner, "hang")["status"] == "hung"


def test_bad_distributed_options_are_one_line_errors(runner: Runner, tmp_path: Path) -> None:
    train = tmp_path / "t.py"
    train.write_text("print('never runs')\n")
    res = runner.run("run", "--nnodes", "2", "--nproc-per-node", "1", str(train))
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "tlog: error: --nnodes > 1 needs --rdzv-endpoint HOST:PORT (or --master-addr/--master-port), the same "
        "on every node"]
    assert not runner.log_dir.exists() or not list(runner.log_dir.iterdir())


# -- the pure parts ----------------------------------------------------------------------------------


def test_torchrun_argv() -> None:
    single = torchrun.DistOptions("2")
    assert single.argv("t.py", ["--lr", "1"], "exp") == (*TORCHRUN, "--nproc-per-node", "2", "--standalone",
                                                        "t.py", "--lr", "1")
    c10d = torchrun.DistOptions("4", "2", 1, "head:29500", "c10d")
    assert c10d.argv("t.py", [], "exp")[3:] == ("--nproc-per-node", "4", "--nnodes", "2", "--rdzv-backend",
                                                "c10d", "--rdzv-endpoint", "head:29500", "--rdzv-id", "exp", "t.py")
    static = torchrun.DistOptions("1", "2", 1, master_addr="head", master_port=29400, rdzv_id="job")
    assert static.argv("t.py", [], "exp")[3:] == ("--nproc-per-node", "1", "--nnodes", "2", "--master-addr", "head",
                                                  "--master-port", "29400", "--rdzv-id", "job", "--node-rank", "1",
                                                  "t.py")
    assert (single.node, c10d.node) == (None, 1)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"nproc_per_node": "two"}, "--nproc-per-node must be a positive number"),
    ({"nnodes": "2:1"}, "--nnodes must be N or MIN:MAX"),
    ({"nnodes": "2", "node_rank": 2, "rdzv_endpoint": "h:1", "name": "x"}, "--node-rank 2 is outside 0..1"),
    ({"nnodes": "2", "rdzv_endpoint": "h:1"}, "--nnodes > 1 needs --name"),
    ({"nproc_per_node": None, "rdzv_id": "x"}, "--rdzv-id needs --nproc-per-node"),
    ({"is_command": True}, "--nproc-per-node runs a Python script under torchrun"),
])
def test_distributed_options_are_checked(kwargs: dict, message: str) -> None:
    args = {"nproc_per_node": "2", "nnodes": None, "node_rank": None, "rdzv_endpoint": None, "rdzv_backend": None,
            "rdzv_id": None, "master_addr": None, "master_port": None, "is_command": False, "name": None, **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        torchrun.dist_options(**args)


def test_launcher_commands_are_recognised() -> None:
    assert torchrun.is_launcher(["torchrun", "--nproc-per-node", "2", "t.py"])
    assert torchrun.is_launcher(["/venv/bin/python", "/venv/bin/torchrun", "t.py"])
    assert torchrun.is_launcher(["python", "-m", "torch.distributed.run", "t.py"])
    assert not torchrun.is_launcher(["python", "-u", "t.py", "-m", "torch"])
    assert not torchrun.is_launcher(["python", "-m", "torch.utils.bottleneck"])


REPORT = """\
E1130 13:33:27.200000 29210 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: -6) \
local_rank: 1 (pid: 29270) of binary: /venv/bin/python
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/torch/distributed/run.py", line 1032, in <module>
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
=======================================================
c.py FAILED
-------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-30_13:33:27
  host      : node7
  rank      : 2 (local_rank: 0)
  exitcode  : -15 (pid: 29269)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 29269
-------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-30_13:33:27
  host      : node7
  rank      : 3 (local_rank: 1)
  exitcode  : -9 (pid: 29270)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 29270
=======================================================
"""


def crash(rank: int, t: float, kind: str, message: str) -> dict:
    return {"kind": "crash", "t": t, "rank": rank, "local_rank": rank % 2, "data": {"type": kind, "message": message}}


def workers(*metas: tuple[int, int]) -> ranks.Workers:
    w = ranks.Workers()
    for rank, pid in metas:
        assert not w.joined({"kind": "meta", "rank": rank, "local_rank": rank % 2, "world_size": 4,
                             "data": {"pid": pid, "host": "node7", "restart_count": 0}})
    return w


def test_torchrun_report_is_read_and_a_signal_death_beats_a_lost_peer() -> None:
    w = workers((2, 29269), (3, 29270))
    w.report.feed(REPORT.splitlines())
    assert w.report.root_rank() == 3
    assert [(e.rank, e.local_rank, e.exit_code, e.host, e.root_cause) for e in w.report.exits[1:]] == [
        (2, 0, -15, "node7", False), (3, 1, -9, "node7", True)]
    w.crashed(crash(2, 10.0, "RuntimeError", "[gloo/pair.cc:553] Connection closed by peer [127.0.0.1]:7083"))
    verdict = ranks.root_cause(w)
    assert (verdict.rank, verdict.crash, verdict.exit.signal, verdict.peer_lost) == (3, None, 9, False)
    assert verdict.consequences == [{"rank": 2, "exception": "RuntimeError: [gloo/pair.cc:553] Connection closed by "
                                     "peer [127.0.0.1]:7083", "exit_code": -15}]
    blame = ranks.blame(w, None, REPORT.splitlines(), 1, None, None, {})
    assert (blame.exit_code, blame.signal, blame.fields["root_cause_rank"]) == (None, 9, 3)
    assert not any("ChildFailedError" in line or "SIGTERM" in line for line in blame.stderr)


def test_the_first_rank_to_fail_on_its_own_is_the_root_cause() -> None:
    w = workers((0, 10), (1, 11), (2, 12))
    w.crashed(crash(0, 5.0, "RuntimeError", "Connection closed by peer"))
    w.crashed(crash(2, 5.2, "ValueError", "bad batch"))
    w.crashed(crash(1, 5.1, "DistBackendError", "NCCL communicator was aborted"))
    verdict = ranks.root_cause(w)
    assert (verdict.rank, verdict.peer_lost) == (2, False)
    assert [(c["rank"], c["after_s"]) for c in verdict.consequences] == [(0, -0.2), (1, -0.1)]
    only_peers = workers((0, 10), (1, 11))
    only_peers.crashed(crash(1, 5.0, "RuntimeError", "Connection closed by peer"))
    assert ranks.root_cause(only_peers).fields() == {
        "rank": 1, "root_cause_rank": 1, "local_rank": 1, "peer_lost": True,
        "consequences": [{"rank": 0, "exit": "stopped after rank 1 failed"}]}
    assert ranks.root_cause(ranks.Workers()) is None


def test_rank_lines_keep_the_failing_rank_only() -> None:
    lines = ["[rank0]: Traceback (most recent call last):", "[rank0]: RuntimeError: Connection closed by peer",
             "[rank1]: Traceback (most recent call last):", "[rank1]: ValueError: bad", "Fatal Python error: x",
             "W1130 13:33:27.184000 29210 torch/distributed/elastic/multiprocessing/api.py:1028] Sending SIGTERM",
             *REPORT.splitlines()[1:]]
    assert torchrun.rank_lines(lines, 1) == ["Traceback (most recent call last):", "ValueError: bad",
                                             "Fatal Python error: x"]
    assert torchrun.rank_lines(lines, 1, own_only=True) == ["Traceback (most recent call last):", "ValueError: bad"]


def test_a_new_restart_count_starts_a_new_round() -> None:
    w = workers((0, 10), (1, 11))
    meta = {"kind": "meta", "rank": 0, "world_size": 2, "data": {"pid": 20, "restart_count": 1}}
    assert w.joined(meta) and w.pids() == {10: 0, 11: 1}
    w = w.next_round(1)
    assert not w.joined(meta) and w.pids() == {20: 0} and w.restart_count == 1


def test_hang_root_is_the_rank_not_waiting_for_its_peers() -> None:
    waiting = 'File "/x/torch/autograd/graph.py", line 979 in _engine_run_backward\nFile "t.py", line 3 in <module>'
    sleeping = 'File "t.py", line 9 in <module>'
    root, others = ranks.hang_root({0: waiting, 1: sleeping, 2: waiting})
    assert root == 1 and [(o["rank"], o["exit"].split(" (")[0]) for o in others] == [
        (0, "waiting for its peers"), (2, "waiting for its peers")]


def test_memory_per_rank_follows_each_worker_tree() -> None:
    mb = 1024 * 1024
    tree = [(1, 10 * mb), (100, 100 * mb), (101, 200 * mb), (150, 50 * mb), (9, 1 * mb)]
    parents = {100: 1, 101: 1, 150: 100, 9: 1}  # 150 is rank 0's DataLoader worker; 1 is the agent
    gpu = DeviceReading(0, 80 * 1024 * mb, 3 * 1024 * mb, None, None, None,
                        (GpuProcess(100, 1024 * mb), GpuProcess(101, 2048 * mb)))
    assert ranks.rank_memory(tree, parents, {100: 0, 101: 1}, [gpu]) == {
        "rank0_gpu_mb": 1024.0, "rank0_rss_mb": 150.0, "rank1_gpu_mb": 2048.0, "rank1_rss_mb": 200.0}


def test_metrics_rows_merge_per_step_and_rank_while_ranks_interleave(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    rows = MetricsRows(CsvTable(path, (*MetricsRows.COLUMNS, "rank")))
    for t, rank, step, src, data in [(1.0, 0, 1, "auto", {"loss": 0.9}), (1.1, 1, 1, "auto", {"loss": 0.5}),
                                     (1.2, 0, 1, None, {"accuracy": 0.7}), (1.3, 1, 1, None, {"accuracy": 0.8}),
                                     (2.0, 1, 2, "auto", {"loss": 0.6}), (2.1, 0, 2, "auto", {"loss": 0.4})]:
        rows.add({"kind": "metrics", "t": t, "rank": rank, "step": step, "src": src, "data": data})
    rows.resources({"rss_mb": 900.0, "rank0_rss_mb": 300.0, "rank1_rss_mb": 310.0})
    rows.close()
    _, got = csv_rows(path)
    assert [(r["rank"], r["step"], r["loss"], r["accuracy"], r["best_loss"]) for r in got] == [
        ("1", "1", "0.5", "0.8", "0.5"), ("0", "1", "0.9", "0.7", "0.9"), ("0", "2", "0.4", "", "0.4"),
        ("1", "2", "0.6", "", "0.5")], "a row is written when its rank's next step begins; bests are per rank"
    assert [r["memory_usage"] for r in got] == ["", "", "300.0", "310.0"], "each rank's own memory"


def test_node_file_names() -> None:
    assert layout.node_file("events.jsonl", None) == layout.node_file("events.jsonl", 0) == "events.jsonl"
    assert layout.node_file("training_metrics.csv", 3) == "training_metrics.node3.csv"


def test_joining_a_node_twice_is_refused(tmp_path: Path) -> None:
    exp = layout.join_experiment_dir(tmp_path, "job", 1)
    assert layout.join_experiment_dir(tmp_path, "job", 0) == exp and layout.node_ids(exp) == [0, 1]
    with pytest.raises(layout.ExperimentError, match="already has node 1's files"):
        layout.join_experiment_dir(tmp_path, "job", 1)
    (tmp_path / "planted").symlink_to(tmp_path / "job", target_is_directory=True)
    with pytest.raises(layout.ExperimentError, match="is a symbolic link; tlog does not write through it"):
        layout.join_experiment_dir(tmp_path, "planted", 2)
    assert layout.node_ids(exp) == [0, 1], "nothing written in the link's target"


def test_panel_shows_a_line_per_rank_and_who_failed_first() -> None:
    state = ViewState(name="ddp")
    for rank in (0, 1):
        state.apply({"kind": "meta", "t": 1.0, "rank": rank, "data": {"pid": 10 + rank, "host": "vm"}})
        state.apply({"kind": "metrics", "t": 2.0, "rank": rank, "step": 7, "data": {"loss": 0.5 + rank}})
    state.apply({"kind": "system", "t": 2.5, "data": {"rss_mb": 900.0, "rank0_rss_mb": 300.0, "rank1_rss_mb": 310.0}})
    state.apply(crash(1, 3.0, "ValueError", "bad batch"))
    state.apply(crash(0, 3.1, "RuntimeError", "Connection closed by peer"))
    state.apply({"kind": "error", "t": 3.5, "data": {"category": "model_inference", "root_cause_rank": 1}})
    console = Console(width=100, record=True)
    console.print(render(state, 100, now=4.0, output_lines=0))
    text = console.export_text()
    assert "rank 0          step 7         loss 0.5       RAM 300 MB  ✗ failed" in text
    assert "rank 1          step 7         loss 1.5       RAM 310 MB  ✗ failed first" in text
    assert "crash    rank 1: ValueError: bad batch" in text


def write_events(path: Path, events: list[dict]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


def test_watch_and_errors_merge_the_nodes(tmp_path: Path) -> None:
    exp = tmp_path / "job"
    exp.mkdir()
    write_events(exp / "events.jsonl", [
        {"kind": "attempt", "t": 1.0, "node": 0, "attempt": 1, "data": {"event": "start", "attempt": 1}},
        {"kind": "metrics", "t": 2.0, "node": 0, "rank": 1, "step": 3, "data": {"loss": 0.7}},
        {"kind": "system", "t": 2.5, "node": 0, "data": {"rss_mb": 100.0, "rank1_rss_mb": 90.0}},
        {"kind": "error", "t": 2.9, "node": 0, "data": {"category": "model_inference", "root_cause_rank": 1}}])
    write_events(exp / "events.node1.jsonl", [
        {"kind": "attempt", "t": 1.1, "node": 1, "attempt": 1, "data": {"event": "start", "attempt": 1}},
        {"kind": "metrics", "t": 2.1, "node": 1, "rank": 0, "step": 3, "data": {"loss": 0.5}},
        {"kind": "system", "t": 2.6, "node": 1, "data": {"rss_mb": 200.0, "rank0_rss_mb": 180.0}},
        {"kind": "error", "t": 3.0, "node": 1,
         "data": {"category": "network", "root_cause_rank": 0, "peer_lost": True}}])
    watcher = Watcher(exp)
    watcher.poll()
    assert watcher.state.ranks == {0: {"step": 3, "loss": 0.5, "rss_mb": 180.0},
                                   1: {"step": 3, "loss": 0.7, "rss_mb": 90.0}}
    assert (watcher.state.step, watcher.state.system["rss_mb"]) == (3, 100.0), "rank 0 leads; node 0's machine"
    assert watcher.state.failed_rank == 1, "a node that only lost its peers does not name the root cause"
    (exp / "training_errors.json").write_text(json.dumps([
        {"id": "attempt-1-node0", "node": 0, "attempt": 1, "timestamp": "2026-01-01T00:00:02", "category": "network",
         "rank": 1, "root_cause_rank": 1, "peer_lost": True, "consequences": []}]))
    (exp / "training_errors.node1.json").write_text(json.dumps([
        {"id": "attempt-1-node1", "node": 1, "attempt": 1, "timestamp": "2026-01-01T00:00:01", "category": "memory",
         "rank": 0, "root_cause_rank": 0, "consequences": []}]))
    rows = load_errors(exp)
    assert [(e["node"], e["category"], e["root_cause_rank"], e.get("root_cause_node")) for e in rows] == [
        (1, "memory", 0, None), (0, "network", 0, 1)], "by time; the node that only lost peers points at node 1"
