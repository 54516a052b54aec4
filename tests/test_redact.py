"""Credential-named values never reach the store (command line, config, argparse capture); the script's
own output is kept as it printed it; ``--keep-secrets`` stores everything as given."""

from __future__ import annotations

import json

from conftest import Runner

from tlog.store import redact

SCRIPT = """\
import argparse
p = argparse.ArgumentParser()
p.add_argument("--api-key"); p.add_argument("--hf_token"); p.add_argument("--tokenizer"); p.add_argument("--lr")
a = p.parse_args()
print("the script prints", a.api_key)
"""
ARGS = ["--api-key", "S3CRET-A", "--hf_token=S3CRET-B", "--tokenizer", "gpt2", "--lr", "0.1"]


def test_secrets_are_masked_in_every_stored_file_but_the_scripts_own_output(runner: Runner) -> None:
    (runner.cwd / "t.py").write_text(SCRIPT)
    res = runner.run("run", "-q", "--name", "sec", "t.py", *ARGS, env=None)
    assert res.returncode == 0, res.stderr
    exp = runner.exp("sec")
    leaked = [p.name for p in exp.rglob("*") if p.is_file() and b"S3CRET" in p.read_bytes()]
    assert leaked == ["training.log"], "no stored file holds a secret but the script's own output"
    assert "the script prints S3CRET-A" in (exp / "training.log").read_text()
    config = json.loads((exp / "training_config.json").read_text())
    assert config["command"][-7:] == ["--api-key", "***", "--hf_token=***", "--tokenizer", "gpt2", "--lr", "0.1"]
    assert config["args"] == {"api_key": "***", "hf_token": "***", "tokenizer": "gpt2", "lr": "0.1"}
    summary = json.loads(runner.run("summary", "sec", "--json").stdout)
    assert "S3CRET" not in json.dumps(summary) and "--api-key ***" in " ".join(summary["command"])

    assert runner.run("run", "-q", "--keep-secrets", "--name", "kept", "t.py", *ARGS).returncode == 0
    kept = json.loads((runner.exp("kept") / "training_config.json").read_text())
    assert kept["args"]["api_key"] == "S3CRET-A" and "--hf_token=S3CRET-B" in kept["command"]


def test_secret_names_are_matched_by_words() -> None:
    secret = ["--api-key", "--api_key", "HF_TOKEN", "--password", "db.password", "access_token", "--secret",
              "client_key", "WANDB_API_KEY", "auth"]
    plain = ["--tokenizer", "max_tokens", "--key-frames", "author", "--lr", "passes", "num_tokens"]
    assert [n for n in secret if not redact.secret_name(n)] == [] and [n for n in plain if redact.secret_name(n)] == []
    assert redact.argv(["env", "HF_TOKEN=x", "python", "t.py", "--token", "--lr", "1", "--password", "p"]) == [
        "env", "HF_TOKEN=***", "python", "t.py", "--token", "--lr", "1", "--password", "***"]
