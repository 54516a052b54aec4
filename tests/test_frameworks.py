"""Real tiny framework jobs under `tlog run`, compared with the framework's own record of the same run.

Each framework job is one process (or one restarted pair) shared by the checks on it: HF Trainer without
accumulation (eval and checkpoints every 4 steps), and with accumulation 4, a collator that raises in the first
attempt and `--restart on-failure`, resumed by Trainer from its newest checkpoint directory; Lightning with
accumulate_grad_batches 1, and 2 with a shape error in training_step of the first attempt, resumed by fit from
the newest .ckpt; accelerate with accumulation 1, and 4 with a shape error in the first attempt and
`--resume-arg`, the script's load_state resuming from the newest save_state directory.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from conftest import Runner, clean_env, script


def _metrics(exp: Path) -> list[dict[str, str]]:
    with open(exp / "training_metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


class Job:
    def __init__(self, runner: Runner, name: str, out: Path) -> None:
        self.runner, self.name = runner, name
        self.rows = _metrics(runner.exp(name))
        self.events = runner.events(name)
        self.history = json.loads((out / "log_history.json").read_text())
        self.out = out

    def train_history(self) -> dict[int, dict]:
        return {h["step"]: h for h in self.history if "loss" in h}


def _hf_job(factory: pytest.TempPathFactory, name: str, options: tuple[str, ...], args: tuple[str, ...]) -> Job:
    runner = Runner(factory.mktemp(name))
    out = runner.cwd / "out"
    r = runner.run("run", "--name", name, "--log-every", "1", *options, script("hf_trainer.py"), "--out", str(out),
                   "--eval-steps", "4", "--save-steps", "4", *args, env=clean_env(HF_HUB_OFFLINE="1"), timeout=240)
    assert r.returncode == 0, r.stderr
    return Job(runner, name, out)


@pytest.fixture(scope="module")
def hf_accum1(tmp_path_factory: pytest.TempPathFactory) -> Job:
    """Two eval datasets (a dict): eval_a_loss and eval_b_loss."""
    return _hf_job(tmp_path_factory, "hf1", (), ("--accum", "1", "--eval-sets"))


@pytest.fixture(scope="module")
def hf_accum4(tmp_path_factory: pytest.TempPathFactory) -> Job:
    """Accumulation 4, a Trainer subclass with its own compute_loss; the collator raises in step 6 of the first
    attempt, after checkpoint-4."""
    return _hf_job(tmp_path_factory, "hf4", ("--restart", "on-failure", "--restart-on", "all", "--backoff", "0"),
                   ("--accum", "4", "--crash-at", "26", "--subclass"))


def _assert_steps_match(job: Job) -> None:
    history = job.train_history()
    assert sorted(history) == list(range(1, 9))
    assert {int(r["step"]) for r in job.rows} == set(history)
    for row in job.rows:
        h = history[int(row["step"])]
        assert math.isclose(float(row["loss"]), h["loss"], rel_tol=1e-6), (row, h)
        assert math.isclose(float(row["learning_rate"]), h["learning_rate"], rel_tol=1e-9), (row, h)
        assert math.isclose(float(row["gradient_norm"]), h["grad_norm"], rel_tol=1e-6), (row, h)
        assert float(row["epoch_progress"]) == h["epoch"]
        assert int(row["epoch"]) == math.ceil(h["epoch"]) - 1  # 1.0, the end of the first epoch, is epoch 0


def _assert_validation_one_series(job: Job, sets: tuple[str, ...] = ("",)) -> None:
    """One series per eval dataset however many eval loaders Trainer builds: eval_loss is validation_loss, a dict's
    eval_<name>_loss is validation_loss/<name>."""
    columns = {f"validation_loss/{name}" if name else "validation_loss" for name in sets}
    assert {k for r in job.rows for k, v in r.items() if k.startswith("validation_loss") and v} == columns
    for name in sets:
        key = f"eval_{name}_loss" if name else "eval_loss"
        evals = {h["step"]: h[key] for h in job.history if key in h}
        assert sorted(evals) == [4, 8]
        column = f"validation_loss/{name}" if name else "validation_loss"
        got = {int(r["step"]): float(r[column]) for r in job.rows if r[column]}
        assert set(got) == set(evals)
        for step, value in got.items():
            assert math.isclose(value, evals[step], rel_tol=1e-6), (step, value, evals[step])


def _checkpoints(job: Job) -> list[tuple[int, str, int]]:
    return [(e["step"], e["data"]["path"], e.get("attempt")) for e in job.events if e["kind"] == "checkpoint"]


def test_hf_trainer_matches_log_history(hf_accum1: Job) -> None:
    _assert_steps_match(hf_accum1)
    assert len(hf_accum1.rows) == 8


def test_hf_trainer_validation_is_one_series_per_eval_dataset(hf_accum1: Job) -> None:
    _assert_validation_one_series(hf_accum1, ("a", "b"))


def test_hf_trainer_checkpoint_directories_counted_once(hf_accum1: Job) -> None:
    hf = hf_accum1.out / "hf"
    assert _checkpoints(hf_accum1) == [(4, str(hf / "checkpoint-4"), 1), (8, str(hf / "checkpoint-8"), 1)]
    summary = json.loads((hf_accum1.runner.exp("hf1") / "training_summary.json").read_text())
    assert summary["status"] == "finished" and summary["checkpoints"]["count"] == 2, summary


def test_hf_trainer_accumulation_4_matches_log_history(hf_accum4: Job) -> None:
    _assert_steps_match(hf_accum4)
    _assert_validation_one_series(hf_accum4)


def test_hf_trainer_collator_crash_is_data_loading_and_restart_resumes(hf_accum4: Job) -> None:
    errors = json.loads((hf_accum4.runner.exp("hf4") / "training_errors.json").read_text())
    assert [(e["category"], e["attempt"]) for e in errors] == [("data_loading", 1)], errors
    hf = hf_accum4.out / "hf"
    assert _checkpoints(hf_accum4) == [(4, str(hf / "checkpoint-4"), 1), (8, str(hf / "checkpoint-8"), 2)]
    starts = [e["data"] for e in hf_accum4.events if e["kind"] == "attempt" and e["data"]["event"] == "start"]
    assert starts[1].get("resume_checkpoint") == str(hf / "checkpoint-4"), starts
    second = [int(r["step"]) for r in hf_accum4.rows][-4:]
    assert second == [5, 6, 7, 8]  # Trainer resumed at its global step 4: the steps continue


# -- Lightning: CSVLogger's metrics.csv is the truth ----------------------------------------------------------------


class LightningJob:
    def __init__(self, runner: Runner, name: str, out: Path) -> None:
        self.runner = runner
        self.rows = _metrics(runner.exp(name))
        self.events = runner.events(name)
        self.out = out
        with open(out / "csv" / "version_0" / "metrics.csv", newline="") as f:
            self.csv = list(csv.DictReader(f))


def _lightning_job(factory: pytest.TempPathFactory, name: str, options: tuple[str, ...],
                   args: tuple[str, ...]) -> LightningJob:
    runner = Runner(factory.mktemp(name))
    out = runner.cwd / "out"
    r = runner.run("run", "--name", name, "--log-every", "1", *options, script("lightning_train.py"),
                   "--out", str(out), *args, timeout=180)
    assert r.returncode == 0, r.stderr
    return LightningJob(runner, name, out)


@pytest.fixture(scope="module")
def lightning_accum1(tmp_path_factory: pytest.TempPathFactory) -> LightningJob:
    """Two validation dataloaders."""
    return _lightning_job(tmp_path_factory, "pl1", (), ("--accum", "1", "--val-sets", "2"))


@pytest.fixture(scope="module")
def lightning_accum2(tmp_path_factory: pytest.TempPathFactory) -> LightningJob:
    """accumulate_grad_batches=2; training_step 11 (epoch 1) raises a shape error in the first attempt."""
    return _lightning_job(tmp_path_factory, "pl2", ("--restart", "on-failure", "--restart-on", "all",
                                                    "--backoff", "0"), ("--accum", "2", "--crash-at", "11"))


def _assert_matches_metrics_csv(job: LightningJob, steps: int) -> None:
    """Every value of metrics.csv is on tlog's row of that step (Lightning's 0-based step + 1), and tlog has no
    other value of those names from the steps metrics.csv covers."""
    by_step = {int(r["step"]): r for r in job.rows}  # a step run again after a restart: the later row
    assert sorted(by_step) == list(range(1, steps + 1))
    names = [k for k in job.csv[0] if k not in ("epoch", "step")]
    expected = {(int(c["step"]) + 1, k): float(c[k]) for c in job.csv for k in names if c[k]}
    first = min(step for step, _ in expected)
    got = {(s, k): float(r[k]) for s, r in by_step.items() if s >= first for k in names if r.get(k)}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert math.isclose(got[key], value, rel_tol=1e-6), (key, got[key], value)
    for c in job.csv:
        assert int(by_step[int(c["step"]) + 1]["epoch"]) == int(c["epoch"])
    assert not any(r["loss"] or r["validation_loss"] for r in job.rows), "the module's own names, not the probe's"


def test_lightning_self_log_matches_metrics_csv(lightning_accum1: LightningJob) -> None:
    assert len(lightning_accum1.csv) == 3 * 8 + 3 * 2  # 8 steps an epoch, then val_loss and train_loss_epoch
    assert {"val_loss/dataloader_idx_0", "val_loss/dataloader_idx_1", "train_mae"} <= lightning_accum1.csv[0].keys()
    _assert_matches_metrics_csv(lightning_accum1, 24)
    lrs = [float(r["learning_rate"]) for r in lightning_accum1.rows]
    assert lrs == [0.05] * 8 + [0.025] * 8 + [0.0125] * 8  # StepLR per epoch: the lr each step used


def test_lightning_accumulation_2_matches_metrics_csv(lightning_accum2: LightningJob) -> None:
    _assert_matches_metrics_csv(lightning_accum2, 12)


def test_lightning_checkpoints_and_restart_from_newest_ckpt(lightning_accum1: LightningJob,
                                                            lightning_accum2: LightningJob) -> None:
    ckpt = lightning_accum1.out / "ckpt"
    assert _checkpoints(lightning_accum1) == [(8 * e, str(ckpt / f"epoch={e - 1}-step={8 * e}.ckpt"), 1)
                                              for e in (1, 2, 3)]
    ckpt = lightning_accum2.out / "ckpt"
    assert _checkpoints(lightning_accum2) == [(4, str(ckpt / "epoch=0-step=4.ckpt"), 1),
                                              (8, str(ckpt / "epoch=1-step=8.ckpt"), 2),
                                              (12, str(ckpt / "epoch=2-step=12.ckpt"), 2)]
    errors = json.loads((lightning_accum2.runner.exp("pl2") / "training_errors.json").read_text())
    assert [(e["category"], e["attempt"]) for e in errors] == [("model_inference", 1)], errors
    starts = [e["data"] for e in lightning_accum2.events if e["kind"] == "attempt" and e["data"]["event"] == "start"]
    assert starts[1].get("resume_checkpoint") == str(ckpt / "epoch=0-step=4.ckpt"), starts
    assert [int(r["step"]) for r in lightning_accum2.rows][-8:] == list(range(5, 13))  # fit resumed at step 4


# -- accelerate: the script's own printed lines are the truth --------------------------------------------------------


class AccelerateJob:
    def __init__(self, runner: Runner, name: str, out: Path, stdout: str) -> None:
        self.runner, self.out = runner, out
        self.rows = {int(r["step"]): r for r in _metrics(runner.exp(name))}  # a step run again: the later row
        self.events = runner.events(name)
        self.errors = json.loads((runner.exp(name) / "training_errors.json").read_text())
        lines = [line.split() for line in stdout.splitlines()]
        self.steps = {int(w[1].rstrip(":")): (float(w[3]), float(w[5])) for w in lines if w[:1] == ["step"]}
        self.evals = {int(w[2].rstrip(":")): float(w[4]) for w in lines if w[:2] == ["eval", "step"]}
        self.last_line = stdout.splitlines()[-1]


def _accelerate_job(factory: pytest.TempPathFactory, name: str, options: tuple[str, ...],
                    args: tuple[str, ...]) -> AccelerateJob:
    runner = Runner(factory.mktemp(name))
    out = runner.cwd / "out"
    r = runner.run("run", "--name", name, *options, script("accelerate_train.py"), "--out", str(out), *args,
                   timeout=180)
    assert r.returncode == 0, r.stderr
    return AccelerateJob(runner, name, out, r.stdout)


@pytest.fixture(scope="module")
def accelerate_accum1(tmp_path_factory: pytest.TempPathFactory) -> AccelerateJob:
    return _accelerate_job(tmp_path_factory, "acc1", (), ("--accum", "1"))


@pytest.fixture(scope="module")
def accelerate_accum4(tmp_path_factory: pytest.TempPathFactory) -> AccelerateJob:
    """Accumulation 4 (steps of 4, 4 and 2 micro-batches an epoch); micro-batch 15 (epoch 1) raises a shape error
    in the first attempt, after checkpoint_0; the restart hands the script the newest save_state directory."""
    return _accelerate_job(tmp_path_factory, "acc4", ("--restart", "on-failure", "--restart-on", "all", "--backoff",
                                                      "0", "--resume-arg", "--resume_from_checkpoint {checkpoint}"),
                           ("--accum", "4", "--crash-at", "15"))


@pytest.mark.parametrize("accum", [1, 4])
def test_accelerate_loop_matches_its_printed_losses(request: pytest.FixtureRequest, accum: int) -> None:
    """Every optimizer step's loss (the mean of its micro-batch losses, though accelerate's backward divided each
    by 4, and the epoch's last step had 2) and lr; each epoch's gathered eval loss (a mean over 10 samples in
    batches of 4, 4 and 2, the last batch yielded after accelerate's base iterator ended) on its step's row."""
    job: AccelerateJob = request.getfixturevalue(f"accelerate_accum{accum}")
    steps_per_epoch = 10 if accum == 1 else 3
    assert sorted(job.steps) == sorted(job.rows) == list(range(1, 3 * steps_per_epoch + 1))
    for step, (loss, lr) in job.steps.items():
        row = job.rows[step]
        assert math.isclose(float(row["loss"]), loss, rel_tol=1e-6), (step, row["loss"], loss)
        assert float(row["learning_rate"]) == lr, (step, row["learning_rate"], lr)
    assert sorted(job.evals) == [steps_per_epoch * e for e in (1, 2, 3)]
    got = {s: float(r["validation_loss"]) for s, r in job.rows.items() if r["validation_loss"]}
    assert got.keys() == job.evals.keys()
    for step, value in job.evals.items():
        assert math.isclose(got[step], value, rel_tol=1e-6), (step, got[step], value)
    assert job.last_line == "other frameworks loaded: []"


def test_accelerate_save_state_directories_and_restart_from_newest(accelerate_accum1: AccelerateJob,
                                                                   accelerate_accum4: AccelerateJob) -> None:
    def saves(job: AccelerateJob) -> list[tuple[int, str, int]]:
        return [(e["step"], e["data"]["path"], e["attempt"]) for e in job.events if e["kind"] == "checkpoint"]

    dirs = accelerate_accum1.out / "checkpoints"
    assert saves(accelerate_accum1) == [(10 * e, str(dirs / f"checkpoint_{e - 1}"), 1) for e in (1, 2, 3)]
    dirs = accelerate_accum4.out / "checkpoints"
    assert saves(accelerate_accum4) == [(3, str(dirs / "checkpoint_0"), 1), (6, str(dirs / "checkpoint_1"), 2),
                                        (9, str(dirs / "checkpoint_2"), 2)]
    assert [(e["category"], e["attempt"]) for e in accelerate_accum4.errors] == [("model_inference", 1)]
    starts = [e["data"] for e in accelerate_accum4.events if e["kind"] == "attempt" and e["data"]["event"] == "start"]
    assert starts[1].get("resume_checkpoint") == str(dirs / "checkpoint_0"), starts


# -- a nanoGPT-style raw loop: its printed lines are the truth -----------------------------------------------------

NANOGPT_SCRAPE = r"step (?P<step>\d+): train loss \S+, val loss (?P<validation_loss>\S+)"  # as in README.md


@pytest.mark.parametrize("accum", [("1",), ("4",), ("4", "--unscaled")], ids=["accum1", "accum4", "accum4-unscaled"])
def test_nanogpt_style_loop_matches_its_printed_losses(runner: Runner, accum: tuple[str, ...]) -> None:
    """`iter N: loss X` (after optimizer step N+1) is the row of step N+1, whether each micro-batch's loss was
    divided by the accumulation before its backward or not; `step N: ... val loss Y`, scraped with the README's
    line, is on the row of step N (N optimizer steps made); the lr is the one each step used."""
    assert NANOGPT_SCRAPE in (Path(__file__).resolve().parent.parent / "README.md").read_text()
    r = runner.run("run", "--name", "ng", "--log-every", "1", "--scrape", NANOGPT_SCRAPE, script("nanogpt_like.py"),
                   "--out_dir", str(runner.cwd / "out"), "--gradient_accumulation_steps", *accum, timeout=120)
    assert r.returncode == 0, r.stderr
    printed = [line.split() for line in r.stdout.splitlines() if line.startswith(("iter ", "step "))]
    iters = {int(w[1].rstrip(":")) + 1: (w[3].rstrip(","), w[5]) for w in printed if w[0] == "iter"}
    vals = {int(w[1].rstrip(":")): w[-1] for w in printed if w[0] == "step"}
    assert len(iters) == 13 and sorted(vals) == [0, 4, 8, 12]
    rows = {int(row["step"]): row for row in _metrics(runner.exp("ng"))}
    assert sorted(rows) == list(range(14))
    for step, (loss, lr) in iters.items():
        assert f"{float(rows[step]['loss']):.6f}" == loss, (step, rows[step]["loss"], loss)
        assert f"{float(rows[step]['learning_rate']):.6e}" == lr, (step, rows[step]["learning_rate"], lr)
    assert {s: f"{float(r['validation_loss']):.4f}" for s, r in rows.items() if r["validation_loss"]} == vals
    saves = [(e["step"], Path(e["data"]["path"]).name) for e in runner.events("ng") if e["kind"] == "checkpoint"]
    assert saves == [(4, "ckpt.pt"), (8, "ckpt.pt"), (12, "ckpt.pt")]
