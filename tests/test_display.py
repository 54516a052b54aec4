"""What ``tlog run`` shows: byte pass-through off a terminal, the live panel in a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import textwrap
import time
from pathlib import Path

from conftest import Runner, clean_env, tlog_cmd

PROGRESS_SCRIPT = textwrap.dedent("""
    import sys, time
    import tlog
    for i in range(1, 31):
        sys.stderr.write(f"\\rtraining: {i * 100 // 30:3d}%|{'#' * (i // 3):<10}| {i}/30")
        sys.stderr.flush()
        tlog.log(loss=1.0 / i, step=i)
        time.sleep(0.04)
    sys.stderr.write("\\n")
    print("all done")
""")


def test_off_a_terminal_bytes_pass_through_and_status_lines_go_to_stderr(runner: Runner) -> None:
    script = runner.cwd / "progress.py"
    script.write_text(PROGRESS_SCRIPT)
    res = subprocess.run(tlog_cmd("run", "--name", "bar", "--status-every", "0.3", str(script)), cwd=runner.cwd,
                         capture_output=True, env=clean_env(), timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"all done\n"
    assert b"\rtraining: 100%|##########| 30/30\n" in res.stderr, "carriage returns passed through untouched"
    status = [ln for ln in res.stderr.decode().splitlines() if ln.startswith("[tlog] bar step")]
    assert status, res.stderr
    assert "loss" in status[-1] and "elapsed" in status[-1]
    log = (runner.exp("bar") / "training.log").read_text()
    bar_lines = [ln for ln in log.splitlines() if "training:" in ln]
    assert len(bar_lines) == 1 and bar_lines[0].endswith("! training: 100%|##########| 30/30"), \
        "a carriage-return progress bar is one line, in its final state, in training.log"


def read_pty(fd: int, proc: subprocess.Popen, timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=10)
    return out


def test_panel_in_a_pseudo_terminal(tmp_path: Path) -> None:
    script = tmp_path / "progress.py"
    script.write_text(PROGRESS_SCRIPT)
    master, slave = pty.openpty()
    proc = subprocess.Popen(tlog_cmd("run", "--name", "tty", str(script)), cwd=tmp_path, stdin=slave,
                            stdout=slave, stderr=slave, env=clean_env(COLUMNS="100", LINES="40", TERM="xterm"))
    os.close(slave)
    out = read_pty(master, proc, 60).decode("utf-8", "replace")
    os.close(master)
    assert proc.returncode == 0, out
    assert "tlog · tty" in out, "the panel is drawn"
    assert "all done" in out, "the script's output scrolls above it"
    assert "finished" in out and "loss" in out
    assert out.count("training:  33%") <= 1, "tqdm-style redraws do not flood the terminal"
    widths = {len(line) for line in out.replace("\r", "\n").splitlines() if line.startswith(("╭", "╰"))}
    assert widths and max(widths) <= 100 + 16, "the panel fits the terminal width"
