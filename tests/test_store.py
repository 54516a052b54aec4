"""The store's files: CSV header growth, tolerant readers, names."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tlog.report import load_summary
from tlog.store import columns, layout
from tlog.store.csvfile import CsvTable
from tlog.store.reader import ReadStats, iter_events
from tlog.store.writer import ExperimentWriter


def test_csv_column_first_seen_mid_run_extends_header(tmp_path: Path) -> None:
    table = CsvTable(tmp_path / "m.csv", ["step", "loss"])
    table.append({"step": 1, "loss": 0.5})
    table.append({"step": 2, "loss": 0.4, "val": 0.9})
    table.append({"step": 3, "loss": 0.3})
    table.close()
    rows = list(csv.reader(open(tmp_path / "m.csv")))
    assert rows == [["step", "loss", "val"], ["1", "0.5", ""], ["2", "0.4", "0.9"], ["3", "0.3", ""]]


def test_reader_tolerates_half_written_and_malformed_lines(tmp_path: Path) -> None:
    (tmp_path / layout.EVENTS).write_bytes(
        b'{"kind":"metrics","t":1,"data":{"loss":1}}\n'
        b"garbage\n"
        b'{"kind":"metrics","t":2,"data":{"loss":2}}\n'
        b'{"kind":"metrics","t":3,"da')
    stats = ReadStats()
    events = list(iter_events(tmp_path, stats))
    assert [e["data"]["loss"] for e in events] == [1, 2]
    assert stats.malformed == 1 and stats.partial_tail


def test_writer_merges_explicit_over_auto_in_one_row(tmp_path: Path) -> None:
    w = ExperimentWriter(tmp_path / "e")
    w.write_events([
        {"kind": "metrics", "t": 1.0, "step": 1, "src": "auto", "data": {"loss": 0.9, "learning_rate": 0.1}},
        {"kind": "metrics", "t": 1.1, "step": 1, "data": {"loss": 0.8, "accuracy": 0.5}},
        {"kind": "metrics", "t": 2.0, "step": 2, "data": {"accuracy": 0.6}},
        {"kind": "metrics", "t": 2.1, "step": 2, "src": "auto", "data": {"loss": 0.7}},
    ])
    w.close("finished")
    rows = list(csv.DictReader(open(tmp_path / "e" / layout.METRICS_CSV, newline="")))
    assert [(r["step"], r["loss"], r["accuracy"], r["best_loss"]) for r in rows] == [
        ("1", "0.8", "0.5", "0.8"), ("2", "0.7", "0.6", "0.7")]
    assert rows[1]["training_time"] == "1.1"


def test_explicit_beats_auto_at_its_step_in_csv_columns_and_summary(tmp_path: Path) -> None:
    """The one rule (tlog.store.stepmerge) as each fold applies it, whichever of the two comes first."""
    w = ExperimentWriter(tmp_path / "e")
    w.write_events([
        {"kind": "metrics", "t": 1.0, "step": 1, "src": "auto", "data": {"loss": 0.9}},
        {"kind": "metrics", "t": 1.1, "step": 1, "data": {"loss": 0.8}},
        {"kind": "metrics", "t": 2.0, "step": 2, "data": {"loss": 0.95}},
        {"kind": "metrics", "t": 2.1, "step": 2, "src": "auto", "data": {"loss": 0.1}},
        {"kind": "metrics", "t": 3.0, "step": 3, "src": "auto", "data": {"loss": 0.5}},
        {"kind": "metrics", "t": 3.1, "step": 3, "src": "auto", "data": {"loss": 0.6}},
    ])
    w.close("finished")
    rows = list(csv.DictReader(open(tmp_path / "e" / layout.METRICS_CSV, newline="")))
    assert [(r["step"], r["loss"]) for r in rows] == [("1", "0.8"), ("2", "0.95"), ("3", "0.6")]
    points = columns.read(tmp_path / "e").get("loss")
    assert points[:, columns.Columns.VALUE].tolist() == [0.8, 0.95, 0.6]
    loss = load_summary(tmp_path / "e")["metrics"]["loss"]
    assert (loss["count"], loss["min"], loss["max"], loss["last"]) == (3, 0.6, 0.95, 0.6)


def test_names_are_claimed_atomically(tmp_path: Path) -> None:
    a, sa = layout.create_experiment_dir(tmp_path, "run")
    b, sb = layout.create_experiment_dir(tmp_path, "run")
    assert (a.name, sa, b.name, sb) == ("run", False, "run-2", True)
    with pytest.raises(layout.ExperimentError):
        layout.create_experiment_dir(tmp_path, "../escape")
