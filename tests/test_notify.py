"""--notify and --notify-url: a real command and a real HTTP server on 127.0.0.1 told how a run ended."""

from __future__ import annotations

import http.server
import json
import sys
import threading
import time
from pathlib import Path

from conftest import Runner, clean_env, script


class _Hook(http.server.BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append({"type": self.headers["Content-Type"], **json.loads(body)})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_command_and_webhook_hear_the_restart_and_the_failure(runner: Runner, tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    (runner.cwd / "tlog.toml").write_text(f'[run]\nnotify_url = ["{url}"]\n')  # from the settings file
    out = tmp_path / "env.jsonl"
    try:
        proc = runner.run("run", "-q", "--name", "exp", "--restart", "on-failure", "--restart-on", "all",
                          "--max-restarts", "1", "--backoff", "0",
                          "--notify", f"{sys.executable} {script('notify_env.py')} {out}",
                          script("steps.py"), "--crash-at", "3")
    finally:
        server.shutdown()
    assert proc.returncode == 1, proc.stderr
    seen = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["TLOG_STATUS"] for e in seen] == ["restarting", "failed"]
    last = seen[-1]
    exp = runner.exp("exp").resolve()
    assert last["TLOG_EXPERIMENT"] == "exp" and last["TLOG_DIR"] == str(exp)
    assert last["TLOG_EXIT_CODE"] == "1" and last["TLOG_STEP"] == "3"
    assert last["TLOG_CATEGORY"] == "model_inference" and "planted failure at step 3" in last["TLOG_CAUSE"]
    assert "TLOG_REMEDY" in last
    bodies = sorted(_Hook.bodies, key=lambda b: b["status"] != "restarting")
    assert [b["status"] for b in bodies] == ["restarting", "failed"]
    assert bodies[-1]["type"] == "application/json" and bodies[-1]["exit_code"] == 1 and bodies[-1]["step"] == 3
    assert bodies[-1]["text"].startswith("tlog: exp failed at step 3 (model_inference): ")
    log = (exp / "training.log").read_text()
    assert log.count("notify_env.py") == 2 and log.count(": HTTP 200") == 2


def test_failing_and_slow_notifiers_change_nothing(runner: Runner) -> None:
    start = time.monotonic()
    proc = runner.run("run", "-q", "--name", "exp", "--notify", "echo broken >&2; exit 3",
                      "--notify", "sleep 60", "--notify-url", "http://127.0.0.1:9/nothing-listens",
                      script("steps.py"), "--epochs", "1", env=clean_env(TLOG_NOTIFY_TIMEOUT_S="1"))
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 30  # the sleep was killed at its timeout, not waited out
    summary = json.loads((runner.exp("exp") / "training_summary.json").read_text())
    assert summary["status"] == "finished"
    log = (runner.exp("exp") / "training.log").read_text()
    assert "notify 'echo broken >&2; exit 3' (finished) exited 3: broken" in log
    assert "notify 'sleep 60' (finished): killed after 1 s" in log
    assert "notify 'http://127.0.0.1:9/nothing-listens' (finished) failed:" in log
