"""Where an experiment lives and what it is called.

Names are validated and never reused: ``os.mkdir`` is the atomic claim, so two
runs started at once with one name still get two directories.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_LOG_DIR = "training_logs"
EVENTS = "events.jsonl"
LOG = "training.log"
METRICS_CSV = "training_metrics.csv"
SYSTEM_CSV = "system_metrics.csv"
ERRORS = "training_errors.json"
PROGRESS = "training_progress.json"
CONFIG = "training_config.json"
SUMMARY = "training_summary.json"
PLOTS = "plots"

_VALID = re.compile(r"^[A-Za-z0-9_.+=@,-][A-Za-z0-9_.+=@, -]*$")


class ExperimentError(ValueError):
    """A bad or unknown experiment name: shown to the user as one line."""


def validate_name(name: str) -> str:
    """Refuse names that would escape the log directory or confuse a shell."""
    if not name or name in (".", "..") or ".." in name or "/" in name or "\\" in name:
        raise ExperimentError(f"invalid experiment name {name!r}: no path separators or '..'")
    if not _VALID.match(name) or len(name) > 200:
        raise ExperimentError(
            f"invalid experiment name {name!r}: use letters, digits and . _ - + = @ , (at most 200)")
    return name


def create_experiment_dir(log_dir: Path, name: str) -> tuple[Path, bool]:
    """Claim ``log_dir/name`` or the next free ``name-N``; True when a suffix was needed."""
    validate_name(name)
    log_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = log_dir / (name if n == 1 else f"{name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate, n > 1
    raise ExperimentError(f"no free experiment name left for {name!r} in {log_dir}")


def join_experiment_dir(log_dir: Path, name: str, node: int) -> Path:
    """One node's share of a multi-node experiment: ``log_dir/name``, created by whichever node comes first.

    The nodes of one job run ``tlog run --nnodes N --name NAME`` each, on a shared filesystem; each writes its
    own files (:func:`node_file`), so no two processes ever append to one file.  Claiming this node's events
    file with O_EXCL refuses a second supervisor for the same node, or a name reused by an earlier job.
    """
    validate_name(name)
    exp_dir = log_dir / name
    exp_dir.mkdir(parents=True, exist_ok=True)
    if exp_dir.is_symlink():  # planted in a shared log dir: the nodes' files would land in its target
        raise ExperimentError(f"{exp_dir} is a symbolic link; tlog does not write through it: give a new --name")
    events = exp_dir / node_file(EVENTS, node)
    try:
        os.close(os.open(events, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        raise ExperimentError(f"experiment {name!r} already has node {node}'s files ({events.name}): another run "
                              f"used this --name and --node-rank; give this job a new --name") from None
    return exp_dir


def node_file(name: str, node: int | None) -> str:
    """``events.jsonl`` for node 0 (and single-node runs), ``events.node2.jsonl`` for node 2."""
    if not node:
        return name
    stem, _, ext = name.rpartition(".")
    return f"{stem}.node{node}.{ext}"


def node_ids(exp_dir: Path) -> list[int]:
    """The nodes that wrote into ``exp_dir`` (``[0]`` for a single-node run), from their events files."""
    found = {0} if (exp_dir / EVENTS).is_file() else set()
    try:
        names = [p.name for p in exp_dir.glob("events.node*.jsonl")]
    except OSError:
        names = []
    found.update(int(n[len("events.node"):-len(".jsonl")]) for n in names
                 if n[len("events.node"):-len(".jsonl")].isdigit())
    return sorted(found)


def is_multi_node(exp_dir: Path) -> bool:
    """Whether several nodes' files must be merged: reports then read every node's events, by time."""
    return any(n for n in node_ids(exp_dir))


def is_experiment(path: Path) -> bool:
    return (path / EVENTS).is_file() or any(path.glob("events.node*.jsonl"))


def started_at(exp_dir: Path) -> float:
    """Time of the first event; the directory's mtime if it has none yet."""
    try:
        with open(exp_dir / EVENTS, "rb") as f:
            first = f.readline()
        match = re.search(rb'"t":\s*([0-9.]+)', first)
        if match:
            return float(match.group(1))
    except OSError:
        pass
    try:
        return exp_dir.stat().st_mtime
    except OSError:
        return 0.0


def list_experiments(log_dir: Path) -> list[Path]:
    """Experiments in ``log_dir``, newest first; none when it does not exist (yet).  A path that is not a
    directory, or one that cannot be read, is the user's to fix: an ``ExperimentError`` naming it."""
    try:
        dirs = [p for p in log_dir.iterdir() if p.is_dir() and is_experiment(p)]
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise ExperimentError(f"log dir {log_dir} is not a directory") from None
    except OSError as exc:
        raise ExperimentError(f"cannot read log dir {log_dir}: {exc.strerror or exc}") from None
    return sorted(dirs, key=started_at, reverse=True)


def resolve(exp: str | None, log_dir: Path) -> Path:
    """A name in ``log_dir``, a path to an experiment directory, or (None) the newest one."""
    if exp is None:
        found = list_experiments(log_dir)
        if not found:
            raise ExperimentError(f"no experiments in {log_dir}")
        return found[0]
    as_path = Path(exp)
    if is_experiment(as_path):
        return as_path
    if "/" not in exp and exp not in (".", ".."):
        candidate = log_dir / exp
        if is_experiment(candidate):
            return candidate
    raise ExperimentError(f"unknown experiment {exp!r} (looked in {log_dir})")
