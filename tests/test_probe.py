"""Zero-code instrumentation: real training scripts under ``tlog run``, every captured value checked exactly
against what the script itself printed."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import ROOT, Runner, clean_env, script


def rows(runner: Runner, name: str) -> list[dict[str, str]]:
    with open(runner.exp(name) / "training_metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def printed(stdout: str, tag: str) -> list[list[str]]:
    return [line.split()[1:] for line in stdout.splitlines() if line.startswith(tag + " ")]


def by_kind(runner: Runner, name: str, kind: str) -> list[dict]:
    return [e for e in runner.events(name) if e["kind"] == kind]


def num(text: str) -> float | None:
    return None if text == "" else float(text)


def run_ok(runner: Runner, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    res = runner.run("run", *args, env=env)
    assert res.returncode == 0, res.stderr
    return res


def test_every_step_exact_with_validation_checkpoints_config_and_nan(runner: Runner) -> None:
    (runner.cwd / "ck").mkdir()
    res = run_ok(runner, "--name", "main", "--log-every", "1", "--grad-norm", "2", script("probe_train.py"),
                 "--ckpt", "ck", "--fake-cuda", "--log-acc", "--subprocess", "--nan-at", "4")
    steps = {int(s): (int(e), int(b), float(loss), float(lr), float(norm))
             for s, e, b, loss, lr, norm in printed(res.stdout, "STEP")}
    table = rows(runner, "main")
    assert [int(r["step"]) for r in table] == list(range(1, 11)), "one row per optimizer step"
    for r in table:
        step = int(r["step"])
        epoch, batch, loss, lr, norm = steps[step]
        assert (int(r["epoch"]), int(r["batch"]), int(r["total_batches"])) == (epoch, batch, 5)
        if step == 4:
            assert r["loss"] == "nan" and math.isnan(loss)
        else:
            assert abs(float(r["loss"]) - loss) < 1e-6, step
        assert float(r["learning_rate"]) == lr, "the lr the step used, scheduler included"
        assert float(r["momentum"]) == 0.9
        assert num(r["gradient_norm"]) == (pytest.approx(norm, rel=1e-5) if step % 2 == 0 else None)
        assert float(r["accuracy"]) == 1.0 / step, "tlog.log lands on the probe's step row"
        assert num(r["nonfinite_steps"]) == (None if step < 4 else 1)
        assert (float(r["cuda_allocated_mb"]), float(r["cuda_reserved_mb"]), float(r["cuda_peak_mb"])) == (3, 5, 4)
        per_step = float(r["samples_per_s"]) / float(r["steps_per_s"])
        assert per_step == pytest.approx(4 if batch == 4 else 8, rel=1e-3), "36 samples: the 5th batch has 4"
    val = {int(e): float(v) for e, v in printed(res.stdout, "VAL")}
    assert {int(r["step"]): float(r["validation_loss"]) for r in table if r["validation_loss"]} == \
        {5: pytest.approx(val[0], abs=1e-9), 10: pytest.approx(val[1], abs=1e-9)}
    warnings = by_kind(runner, "main", "warning")
    assert [(w["step"], w["data"]["category"]) for w in warnings] == [(4, "nan")]
    ckpts = by_kind(runner, "main", "checkpoint")
    assert [(c["step"], Path(c["data"]["path"]).name) for c in ckpts] == [
        (5, "model-0.pt"), (5, "opt-0.pt"), (10, "model-1.pt"), (10, "opt-1.pt")]
    for c in ckpts:
        assert c["data"]["bytes"] == Path(c["data"]["path"]).stat().st_size > 0
    phases = [(p["step"], p["data"]["phase"]) for p in by_kind(runner, "main", "phase")]
    assert phases == [(5, "validation"), (5, "checkpoint_saving"), (5, "forward_pass"), (5, "checkpoint_saving"),
                      (5, "forward_pass"), (10, "validation"), (10, "checkpoint_saving"), (10, "forward_pass"),
                      (10, "checkpoint_saving"), (10, "forward_pass")], "each finished save ends its phase"
    assert printed(res.stdout, "SUB") == [["'child-ok\\n'"]], "a captured child's output stays clean"
    assert not any("leak" in e["data"] for e in by_kind(runner, "main", "metrics"))
    config = json.loads((runner.exp("main") / "training_config.json").read_text())
    assert config["args"] == {"epochs": 2, "samples": 36, "batch_size": 8, "lr": 0.1, "workers": 0, "context": None,
                              "nan_at": [4], "ckpt": "ck", "fake_cuda": True, "log_acc": True, "subprocess": True,
                              "no_grad_norm_api": False, "blip_at_epoch": -1, "marker": "blip"}
    assert {k: config["optimizer"][k] for k in ("class", "lr", "momentum", "nesterov")} == \
        {"class": "SGD", "lr": 0.1, "momentum": 0.9, "nesterov": False}
    assert config["model"] == {"parameters": 6 * 8 + 8 + 8 + 1, "trainable": 65, "device": "cpu", "dtype": "float32"}
    assert {k: config["data"][k] for k in ("batch_size", "batches_per_epoch", "dataset_size", "num_workers")} == \
        {"batch_size": 8, "batches_per_epoch": 5, "dataset_size": 36, "num_workers": 0}
    env = config["environment"]
    assert env["torch"] == torch.__version__ and env["argv"][-1] == "4" and env["cwd"] == str(runner.cwd)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert config["git"]["commit"] == head.stdout.strip() and isinstance(config["git"]["dirty"], bool)


def test_log_every_n_reports_window_means_at_multiples_and_epoch_ends(runner: Runner) -> None:
    res = run_ok(runner, "--name", "win", "--log-every", "3", "--grad-norm", "1", script("probe_train.py"),
                 "--nan-at", "8", "--no-grad-norm-api")
    losses = {int(s): float(loss) for s, _e, _b, loss, _lr, _n in printed(res.stdout, "STEP")}
    assert len(losses) == 10
    table = rows(runner, "win")
    windows = {3: [1, 2, 3], 5: [4, 5], 6: [6], 9: [7, 8, 9], 10: [10]}  # 5 batches an epoch: its end reports
    assert [int(r["step"]) for r in table] == list(windows)
    for r in table:
        want = sum(losses[s] for s in windows[int(r["step"])]) / len(windows[int(r["step"])])
        if math.isnan(want):
            assert r["loss"] == "nan"
        else:
            assert abs(float(r["loss"]) - want) < 1e-6
        assert r["gradient_norm"] == "", "its API is gone: that probe is off"
    assert [num(r["nonfinite_steps"]) for r in table] == [None, None, None, 1, 1]
    assert [int(r["step"]) for r in table if r["validation_loss"]] == [5, 10]
    warnings = [(w.get("step"), w["data"]["category"], w["data"]["message"]) for w in by_kind(runner, "win", "warning")]
    assert len(warnings) == 2
    assert warnings[0][:2] == (None, "probe") and "'grad_norm' disabled" in warnings[0][2], "before step 1, once"
    assert warnings[1][:2] == (8, "nan"), "the step where it first appeared, though read at step 9"


LOOPS = {  # loop: (printed fields -> {metric: value}, steps)
    "accum": (lambda f: {"loss": float(f[0])}, 6),
    "lbfgs": (lambda f: {"loss": float(f[0])}, 4),
    "manual": (lambda f: {"loss": float(f[0])}, 5),
    "gan": (lambda f: {"loss": float(f[0]), "loss/opt1": float(f[0]), "loss/opt2": float(f[1])}, 4),
    "amp": (lambda f: {"loss": float(f[0])}, 5),
    "graphs": (lambda f: {"loss": float(f[0])}, 6),
}


@pytest.mark.parametrize("loop", list(LOOPS))
def test_loops_beyond_the_textbook(runner: Runner, loop: str) -> None:
    expect, n = LOOPS[loop]
    res = run_ok(runner, "--name", loop, "--log-every", "1", script("probe_loops.py"), "--loop", loop,
                 "--steps", str(n))
    want = {int(f[0]): expect(f[1:]) for f in printed(res.stdout, "STEP")}
    table = rows(runner, loop)
    assert [int(r["step"]) for r in table] == list(range(1, n + 1)) == sorted(want)
    for r in table:
        for key, value in want[int(r["step"])].items():
            assert abs(float(r[key]) - value) < 1e-6, (r["step"], key)
    if loop == "gan":
        assert [(int(r["steps/opt1"]), int(r["steps/opt2"])) for r in table] == [(s, s) for s in range(1, n + 1)]
        assert {(r["lr/opt1"], r["lr/opt2"]) for r in table} == {("0.01", "0.02")}
        config = json.loads((runner.exp(loop) / "training_config.json").read_text())
        assert [config["optimizers"][k]["class"] for k in ("opt1", "opt2")] == ["Adam", "SGD"]
        assert config["model"]["parameters"] == (2 * 4 + 4) + (4 + 1)
    if loop == "accum":
        assert [int(r["batch"]) for r in table] == [4 * s - 1 for s in range(1, n + 1)]
        assert {round(float(r["samples_per_s"]) / float(r["steps_per_s"])) for r in table} == {16}


@pytest.mark.parametrize("context, workers, epochs", [("fork", 2, 2), ("spawn", 1, 1)])
def test_dataloader_workers_do_not_report(runner: Runner, context: str, workers: int, epochs: int) -> None:
    res = run_ok(runner, "--name", context, "--log-every", "1", script("probe_train.py"), "--workers", str(workers),
                 "--context", context, "--epochs", str(epochs))
    want = {int(s): (int(e), int(b), float(loss)) for s, e, b, loss, _lr, _n in printed(res.stdout, "STEP")}
    table = rows(runner, context)
    assert len(want) == 5 * epochs and [int(r["step"]) for r in table] == sorted(want)
    for r in table:
        epoch, batch, loss = want[int(r["step"])]
        assert (int(r["epoch"]), int(r["batch"])) == (epoch, batch) and abs(float(r["loss"]) - loss) < 1e-6
    child_metas = [m for m in by_kind(runner, context, "meta") if "argv" in m["data"]]
    assert len(child_metas) == 1, "workers never speak for the run"


def test_no_device_sync_between_reports(runner: Runner) -> None:
    res = run_ok(runner, "--name", "sync", "--log-every", "5", script("probe_sync.py"), "12")
    reads = printed(res.stdout, "READ")
    assert reads == [["5", "tolist"], ["10", "tolist"], ["12", "tolist"]], "one read per report, none per step"
    losses = {int(s): float(loss) for s, loss in printed(res.stdout, "STEP")}
    table = {int(r["step"]): r for r in rows(runner, "sync")}
    assert sorted(table) == list(range(1, 13)), "the held-back tlog.log values keep their own steps"
    for step, loss in losses.items():
        assert float(table[step]["device_metric"]) == pytest.approx(2 * loss, abs=1e-6)
    for step, window in ((5, range(1, 6)), (10, range(6, 11)), (12, range(11, 13))):
        assert float(table[step]["loss"]) == pytest.approx(sum(losses[s] for s in window) / len(window), abs=1e-6)
    assert [s for s, r in table.items() if r["loss"]] == [5, 10, 12]


def test_no_instrument_patches_nothing(runner: Runner) -> None:
    run_ok(runner, "--name", "off", "--no-instrument", script("probe_train.py"), "--epochs", "1", "--log-acc")
    table = rows(runner, "off")
    assert len(table) == 5 and {r["loss"] for r in table} == {""} and table[0]["accuracy"] == "1.0"
    assert not by_kind(runner, "off", "checkpoint") and not by_kind(runner, "off", "warning")
    config = json.loads((runner.exp("off") / "training_config.json").read_text())
    assert "args" not in config and "optimizer" not in config and "environment" in config


def test_script_without_torch_and_the_kill_switch(runner: Runner) -> None:
    plain = runner.cwd / "plain.py"
    plain.write_text("import argparse, tlog\n"
                     "args = argparse.ArgumentParser()\nargs.add_argument('--k', type=int)\n"
                     "ns = args.parse_args()\ntlog.log(value=ns.k * 2.5, step=1)\nprint('done', ns.k)\n")
    res = run_ok(runner, "--name", "plain", str(plain), "--k", "4")
    assert "done 4" in res.stdout
    assert [(r["step"], r["value"]) for r in rows(runner, "plain")] == [("1", "10.0")]
    config = json.loads((runner.exp("plain") / "training_config.json").read_text())
    assert config["args"] == {"k": 4} and "torch" not in config["environment"]
    assert [m["data"]["argv"][-1] for m in by_kind(runner, "plain", "meta") if "argv" in m["data"]] == ["4"]
    res = run_ok(runner, "--name", "killed", str(plain), "--k", "4", env=clean_env(TLOG_DISABLE="1"))
    assert "done 4" in res.stdout
    assert not [m for m in by_kind(runner, "killed", "meta") if "argv" in m["data"]], "the child said nothing"
    assert not by_kind(runner, "killed", "metrics") and rows(runner, "killed") == []
    assert "args" not in json.loads((runner.exp("killed") / "training_config.json").read_text())


EXPLICIT_LOSS = """
import torch, tlog
from torch import nn
torch.manual_seed(0)
model, loss_fn = nn.Linear(4, 1), nn.MSELoss()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(1, 7):
    x = torch.randn(8, 4)
    loss = loss_fn(model(x), x.sum(1, keepdim=True))
    opt.zero_grad()
    loss.backward()
    opt.step()
    tlog.log(loss=1000.0 + step)  # the script's own loss, after the probe reported the step
    print("STEP", step, repr(loss.item()), flush=True)
"""


def test_explicit_values_win_over_the_probes_in_csv_and_summary(runner: Runner, tmp_path: Path) -> None:
    path = tmp_path / "explicit.py"
    path.write_text(EXPLICIT_LOSS)
    res = run_ok(runner, "--name", "explicit", "--log-every", "1", str(path))
    assert len(printed(res.stdout, "STEP")) == 6
    assert [float(r["loss"]) for r in rows(runner, "explicit")] == [1000.0 + s for s in range(1, 7)]
    for args in ((), ("--json",)):
        assert runner.run("summary", "explicit", *args).returncode == 0
    loss = json.loads((runner.exp("explicit") / "training_summary.json").read_text())["metrics"]["loss"]
    assert (loss["min"], loss["max"], loss["last"], loss["count"]) == (1001.0, 1006.0, 1006.0, 6)


def test_a_restart_from_an_epoch_end_checkpoint_counts_on_epochs_and_steps(runner: Runner) -> None:
    (runner.cwd / "ck").mkdir()
    res = run_ok(runner, "--name", "epochs", "--log-every", "1", "--restart", "on-failure", "--backoff", "0.1",
                 script("probe_train.py"), "--epochs", "3", "--ckpt", "ck", "--blip-at-epoch", "2")
    assert "RESUMED 10 2" in res.stdout
    want = [(int(s), int(e), int(b)) for s, e, b, *_ in printed(res.stdout, "STEP")]
    assert want == [(s, (s - 1) // 5, (s - 1) % 5) for s in range(1, 16)]
    assert [(int(r["step"]), int(r["epoch"]), int(r["batch"])) for r in rows(runner, "epochs")] == want
    checkpoints = by_kind(runner, "epochs", "checkpoint")
    assert {(c["epoch"], c["data"]["epoch_complete"]) for c in checkpoints} == {(0, True), (1, True), (2, True)}
