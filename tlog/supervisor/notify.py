"""``--notify CMD`` and ``--notify-url URL``: tell someone when a run ends or restarts, and why.

A command runs through the shell with the outcome in its environment (``TLOG_STATUS``, ``TLOG_EXPERIMENT``,
``TLOG_CATEGORY``, ``TLOG_CAUSE``, ``TLOG_REMEDY``, ``TLOG_STEP``, ``TLOG_EXIT_CODE``, ``TLOG_DIR``), so
``notify-send``, ``mail`` or a chat CLI just works; a URL gets the same fields as a JSON POST, plus a one-line
``text`` that Slack, Discord (``content``) and Teams incoming webhooks display as is.

Notifiers run in a background thread each, bounded by ``TIMEOUT_S``; what each did (or why it failed) goes
to training.log.  Nothing a notifier does changes the run's status or tlog's exit code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from tlog import protocol

TIMEOUT_S = float(os.environ.get(protocol.ENV_NOTIFY_TIMEOUT_S) or 10.0)  # the environment: tests, slow mailers
FIELDS = tuple(protocol.NOTIFY_ENV)


def outcome(status: str, experiment: str, exp_dir: str, step: Any = None, exit_code: Any = None,
            error: dict | None = None) -> dict[str, Any]:
    """The fields of one notification, from a status and the error that explains it (if any)."""
    error = error or {}
    return {"status": status, "experiment": experiment, "category": error.get("category"),
            "cause": error.get("cause") or error.get("error_message"), "remedy": error.get("remedy"),
            "step": step, "exit_code": exit_code, "dir": exp_dir}


def text(fields: dict[str, Any]) -> str:
    """``tlog: exp failed at step 120 (memory): CUDA out of memory ... -> remedy``: one line for a chat."""
    where = f" at step {fields['step']}" if fields.get("step") is not None else ""
    line = f"tlog: {fields['experiment']} {fields['status']}{where}"
    if fields.get("category"):
        line += f" ({fields['category']})"
    if fields.get("cause"):
        line += f": {fields['cause']}"
    if fields.get("remedy"):
        line += f" -> {fields['remedy']}"
    return line


def environment(fields: dict[str, Any]) -> dict[str, str]:
    return {name: "" if fields.get(k) is None else str(fields[k]) for k, name in protocol.NOTIFY_ENV.items()}


class Notifier:
    """Sends each notification to every command and URL, off the supervisor's thread."""

    def __init__(self, commands: tuple[str, ...], urls: tuple[str, ...], record: Callable[[str], None],
                 timeout_s: float = TIMEOUT_S) -> None:
        self.commands, self.urls, self.record, self.timeout_s = commands, urls, record, timeout_s
        self.threads: list[threading.Thread] = []

    def send(self, fields: dict[str, Any]) -> None:
        """Start every notifier for ``fields``; returns at once."""
        for command in self.commands:
            self._start(self._command, command, fields)
        for url in self.urls:
            self._start(self._post, url, fields)

    def wait(self) -> None:
        """At tlog's exit: give the notifiers still running the rest of their time, then leave them."""
        deadline = time.monotonic() + self.timeout_s + 1.0
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _start(self, target: Callable[[str, dict], None], where: str, fields: dict[str, Any]) -> None:
        thread = threading.Thread(target=self._guarded, args=(target, where, fields), daemon=True,
                                  name="tlog-notify")
        thread.start()
        self.threads.append(thread)

    def _guarded(self, target: Callable[[str, dict], None], where: str, fields: dict[str, Any]) -> None:
        try:
            target(where, fields)
        except Exception as exc:  # noqa: BLE001 - a notifier never harms the run
            self.record(f"notify {where!r} ({fields['status']}) failed: {exc}")

    def _command(self, command: str, fields: dict[str, Any]) -> None:
        proc = subprocess.Popen(command, shell=True, env={**os.environ, **environment(fields)},
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)  # its own group: a timeout kills what the shell started
        try:
            _, err = proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            self.record(f"notify {command!r} ({fields['status']}): killed after {self.timeout_s:g} s")
            return
        if proc.returncode:
            last = (err or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
            self.record(f"notify {command!r} ({fields['status']}) exited {proc.returncode}: {last[0][:200]}")
        else:
            self.record(f"notify {command!r} ({fields['status']}): ok")

    def _post(self, url: str, fields: dict[str, Any]) -> None:
        line = text(fields)
        body = protocol.dumps({**fields, "text": line, "content": line})
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "tlog"})
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            self.record(f"notify {url} ({fields['status']}): HTTP {response.status}")
