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


def _read(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    return Path(source).read_text(encoding="utf-8", errors="replace")


def classify_command(source: str, as_json: bool) -> int:
    """Classify a saved log or pasted traceback; a bad path is a one-line error and exit code 2, never a
    traceback, since people run this on the output of a crash and need the answer, not another crash."""
    try:
        text = _read(source)
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"tlog: error: cannot read {source}: {reason}", file=sys.stderr)
        return 2
    diagnosis = classify_text(text)
    print(json.dumps(diagnosis.to_dict(), indent=2) if as_json else render_diagnosis(diagnosis))
    return 0
