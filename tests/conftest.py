"""Helpers to run the real ``tlog`` CLI as a subprocess and read what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "scripts"


def tlog_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tlog", *args]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TLOG_")}
    env.update(extra)
    return env


class Runner:
    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.log_dir = cwd / "training_logs"

    def run(self, *args: str, timeout: float = 120, env: dict | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(tlog_cmd(*args), cwd=self.cwd, capture_output=True, text=True,
                              timeout=timeout, env=env or clean_env(), input=input)

    def popen(self, *args: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(tlog_cmd(*args), cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=kw.pop("env", None) or clean_env(), **kw)

    def exp(self, name: str) -> Path:
        return self.log_dir / name

    def events(self, name: str) -> list[dict]:
        lines = (self.exp(name) / "events.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line]


@pytest.fixture
def runner(tmp_path: Path) -> Runner:
    return Runner(tmp_path)


def script(name: str) -> str:
    return str(SCRIPTS / name)
