"""Human and JSON output of a crash diagnosis, and the ``tlog classify FILE|-`` command behind it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tlog.diagnosis.classify import Diagnosis, classify_text


def render_diagnosis(d: Diagnosis) -> str:
    """A few lines, the verdict first: what failed and whether restarting is worth it, then why we think so."""
    restart = "transient (a restart may help)" if d.transient else "deterministic (a restart will fail again)"
    lines = [
        f"category  {d.category}",
        f"phase     {d.phase or 'unknown'}",
        f"restart   {restart}",
        f"cause     {d.cause}",
        f"remedy    {d.remedy or 'none known'}",
        f"rule      {d.rule}",
    ]
    if d.evidence:
        lines.append("evidence")
        lines += [f"  - {item}" for item in d.evidence]
    return "\n".join(lines)


TAIL_BYTES = 512 * 1024  # a failure is at the end of its log; a whole 100 MB log would take seconds to parse


_TEXT_BYTES = bytes(range(32, 256)) + b"\t\n\r\x0c\x1b"  # what is left after deleting these is binary


class Unreadable(Exception):
    """The input is not a log: empty, or binary."""


def _read(source: str) -> str:
    """The last ``TAIL_BYTES`` of the log, from a line start; stdin is read whole (a paste is small)."""
    if source == "-":
        stdin = getattr(sys.stdin, "buffer", None)  # a text stream without bytes when stdin is replaced
        data = (stdin.read() if stdin else sys.stdin.read().encode())[-TAIL_BYTES:]
    else:
        with Path(source).open("rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(0, size - TAIL_BYTES))
            data = fh.read()
            if size > TAIL_BYTES:
                data = data[data.find(b"\n") + 1:]
    if not data.strip():
        raise Unreadable("it is empty")
    if len(data.translate(None, _TEXT_BYTES)) > len(data) // 20:  # logs have few control bytes; binaries many
        raise Unreadable("it is binary, not a log or traceback")
    return data.decode("utf-8", errors="replace")


def classify_command(source: str, as_json: bool) -> int:
    """Classify a saved log or pasted traceback; a bad path is a one-line error and exit code 2, never a
    traceback, since people run this on the output of a crash and need the answer, not another crash."""
    try:
        text = _read(source)
    except (OSError, UnicodeError, Unreadable) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"tlog: error: cannot read {source}: {reason}", file=sys.stderr)
        return 2
    diagnosis = classify_text(text)
    print(json.dumps(diagnosis.to_dict(), indent=2) if as_json else render_diagnosis(diagnosis))
    return 0
