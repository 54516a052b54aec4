"""``tlog run --scrape``: metrics read from the output of programs tlog cannot hook."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import pytest
from conftest import Runner

from tlog.supervisor.scrape import Scraper

TRAINER = textwrap.dedent("""\
    #!/usr/bin/env bash
    echo "Epoch 1/2"
    echo "step 1 | loss: 0.9 acc=0.50 lr=1e-3"
    echo "[2024-01-01 10:00:00] saving checkpoint to /tmp/ck.pt: 3 files"
    echo "step 2 | loss: 0.8 acc=0.60 lr=1e-3"
    echo "eval: val_loss=0.85 val_acc=0.55"
    echo "Epoch 2/2"
    echo "step 3 | loss: 0.7 acc=0.70 lr=5e-4"
    printf 'progress 50%%\\rprogress 100%%\\n'
    echo "step 4 | loss: nan acc=0.75 lr=5e-4"
    echo "done in 12ms, torch version 2.13.0, gpu util 91%, eta 00:01:02"
    sleep 0.5
    echo "step 5 | loss: 0.6 acc=0.80 lr=5e-4" >&2
""")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _trainer(runner: Runner) -> str:
    sh = runner.cwd / "train.sh"
    sh.write_text(TRAINER)
    return str(sh)


@pytest.mark.parametrize(("line", "expected"), [
    ("epoch 3 | loss: 0.512 acc=0.91 lr=3e-4", (1, 3, {"loss": 0.512, "accuracy": 0.91, "learning_rate": 3e-4})),
    ("32/32 [====] - 1s 3ms/step - loss: 0.4795 - accuracy: 0.8100 - val_loss: 0.5",
     (1, None, {"loss": 0.4795, "accuracy": 0.81, "validation_loss": 0.5})),
    ("{'loss': 0.6931, 'learning_rate': 5e-05, 'epoch': 0.5}", (1, 0, {"loss": 0.6931, "learning_rate": 5e-05})),
    ("Epoch 0: 100%|####| 32/32 [00:01<00:00, 25.13it/s, v_num=0, train_loss=0.693]",
     (1, 0, {"train_loss": 0.693})),
    ("Train Epoch: 1 [0/60000 (0%)]\tLoss: 2.300039", (1, 1, {"loss": 2.300039})),
    ("2024-01-01 10:00:00,123 - INFO - step=100 loss=0.5", (100, None, {"loss": 0.5})),
    ("Step 500: loss = 0.25, lr = 1e-3.", (500, None, {"loss": 0.25, "learning_rate": 1e-3})),
    ("loss: NaN grad_norm=inf", (1, None, {"loss": "nan", "gradient_norm": "inf"})),
    ("time: 12:30:45", None),
    ("acc: 91%", None),
    ("latency=12ms", None),
    ("model.py:42: UserWarning: deprecated", None),
    ("version: 1.2.3", None),
    ("torch==2.13.0", None),
    ("samples: 1,234", None),
    ("Note: 5 files were skipped", None),
    ("saved to /home/u/ckpt: 3", None),
    ("ratio=3/4 id=0x1f pid=4242", None),
    ("iter 20 of the loop", None),
])
def test_default_pattern_takes_metrics_and_leaves_the_rest(line: str, expected: tuple | None) -> None:
    events = Scraper().scan([line])
    if expected is None:
        assert events == []
        return
    step, epoch, data = expected
    assert len(events) == 1
    event = events[0]
    assert (event["step"], event.get("epoch"), event["data"]) == (step, epoch, data)
    assert event["kind"] == "metrics" and event["src"] == "scrape"


def test_position_lines_carry_over_and_steps_count_lines_without_one() -> None:
    scraper = Scraper()
    events = scraper.scan(["Epoch 2/5", "loss=0.5", "loss=0.4", "iter 7", "acc=0.9"])
    assert [(e["step"], e["epoch"], e["data"]) for e in events] == [
        (1, 2, {"loss": 0.5, "total_epochs": 5}), (2, 2, {"loss": 0.4, "total_epochs": 5}),
        (7, 2, {"accuracy": 0.9, "total_epochs": 5})]


def test_framework_output_becomes_exact_rows(runner: Runner) -> None:
    res = runner.run("run", "--name", "sc", "--scrape", "--", "bash", _trainer(runner))
    assert res.returncode == 0, res.stderr
    assert "step 1 | loss: 0.9 acc=0.50 lr=1e-3\n" in res.stdout, "output passes through untouched"
    assert "step 5 | loss: 0.6" in res.stderr
    rows = sorted(_rows(runner.exp("sc") / "training_metrics.csv"), key=lambda r: int(r["step"]))
    cols = ("step", "epoch", "loss", "accuracy", "learning_rate", "validation_loss", "validation_accuracy",
            "total_epochs")
    assert [tuple(r[c] for c in cols) for r in rows] == [
        ("1", "1", "0.9", "0.5", "0.001", "", "", "2"),
        ("2", "1", "0.8", "0.6", "0.001", "0.85", "0.55", "2"),
        ("3", "2", "0.7", "0.7", "0.0005", "", "", "2"),
        ("4", "2", "nan", "0.75", "0.0005", "", "", "2"),
        ("5", "2", "0.6", "0.8", "0.0005", "", "", "2"),
    ]
    events = [e for e in runner.events("sc") if e["kind"] == "metrics"]
    assert len(events) == 6 and {e["src"] for e in events} == {"scrape"}
    summary = json.loads((runner.exp("sc") / "training_summary.json").read_text())
    assert summary["metrics"]["accuracy"]["last"] == 0.8 and summary["metrics"]["loss"]["nonfinite"] == 1
    assert summary["steps"] == 5


def test_user_patterns_name_their_values(runner: Runner) -> None:
    sh = runner.cwd / "fairseq.sh"
    sh.write_text(textwrap.dedent("""\
        echo "| epoch 001 | loss 4.56 | ppl 23.5 | wps 12000 | num_updates 100"
        echo "| epoch 002 | loss 3.90 | ppl 14.9 | wps 12100 | num_updates 200"
        echo "| valid on 'valid' subset | loss 4.01 | ppl 16.1"
        echo "loss: 9.9 is not taken: the default pattern is off when patterns are given"
    """))
    res = runner.run("run", "--name", "fs",
                     "--scrape", r"epoch (?P<epoch>\d+) \| loss (?P<loss>\S+) \| ppl (?P<ppl>\S+).*num_updates "
                                 r"(?P<step>\d+)",
                     r"--scrape=valid on .* \| loss (?P<validation_loss>\S+) \| ppl (?P<valid_ppl>\S+)",
                     "--", "bash", str(sh))
    assert res.returncode == 0, res.stderr
    rows = _rows(runner.exp("fs") / "training_metrics.csv")
    cols = ("step", "epoch", "loss", "ppl", "validation_loss", "valid_ppl")
    assert [tuple(r[c] for c in cols) for r in rows] == [
        ("100", "1", "4.56", "23.5", "", ""),
        ("200", "2", "3.9", "14.9", "4.01", "16.1"),
    ]


def test_scraping_is_off_by_default(runner: Runner) -> None:
    res = runner.run("run", "--name", "off", "--", "bash", _trainer(runner))
    assert res.returncode == 0, res.stderr
    assert "step 1 | loss: 0.9" in res.stdout
    assert [e for e in runner.events("off") if e["kind"] == "metrics"] == []
    assert _rows(runner.exp("off") / "training_metrics.csv") == []


def test_bare_scrape_before_the_script_is_not_a_pattern(runner: Runner) -> None:
    py = runner.cwd / "echo_args.py"
    py.write_text("import sys\nprint(sys.argv[1:])\nprint('loss=0.25 acc=0.5')\n")
    res = runner.run("run", "--scrape", "--name", "bare", str(py), "--scrape", "x")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == "['--scrape', 'x']", "the script's own --scrape is left alone"
    rows = _rows(runner.exp("bare") / "training_metrics.csv")
    assert [(r["step"], r["loss"], r["accuracy"]) for r in rows] == [("1", "0.25", "0.5")]


@pytest.mark.parametrize(("pattern", "message"), [
    ("(?P<loss>[0-9", "not a regular expression"),
    ("--scrape=loss=\\S+", "name the values to keep"),
])
def test_bad_pattern_is_a_one_line_error(runner: Runner, pattern: str, message: str) -> None:
    args = [pattern] if pattern.startswith("--") else ["--scrape", pattern]
    res = runner.run("run", *args, "--", "true")
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and message in res.stderr and res.stderr.startswith("tlog: error: --scrape")
    assert not runner.log_dir.exists()
