"""``tlog run --scrape``: metrics read from the output of programs tlog cannot hook.

Opt-in.  Off, the session holds no scraper and pays nothing.  On, each complete
output line (stdout and stderr, in the reader thread) goes through the
patterns; a line that yields values becomes one metrics event (``src:
"scrape"``) through the same path as the child's own events (writer, panel).

The default pattern takes ``key: value`` and ``key=value`` pairs whose key
looks like an identifier (``loss``, ``val_acc``, ``train/loss``, ``'loss'`` in a
printed dict) and whose value looks like a float (``0.512``, ``3e-4``, ``nan``)
and is followed by the end of the line, a separator (``,;|)]}``), `` - `` or
another pair.  So it reads::

    epoch 3 | loss: 0.512 acc=0.91 lr=3e-4                   (Keras, HF dicts, Lightning bars alike)

and leaves alone timestamps (``12:30:45``), percentages (``acc: 91%``), units
(``12ms``), fractions and paths (``3/10``, ``file.py:42:``), versions
(``1.2.3``), thousands (``1,234``) and prose (``Note: 5 files``).  Keys are
lower-cased; ``lr``/``acc``/``val_loss``/``val_acc``/``grad_norm`` are stored
under the seed's column names.  ``epoch N``, ``step N``, ``iter N``, ``batch
N`` (optionally ``N/TOTAL``) set the position even without ``:``/``=``.

A user pattern (``--scrape REGEX``) names its values with groups,
``(?P<loss>...)``; groups named ``step``, ``epoch`` or ``batch`` set the
position.  The step of an event is the last scraped step (``step``, ``iter``,
``global_step``); a program that never prints one gets a running count of the
lines that gave metrics.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Iterable, Sequence

from tlog.protocol import finite

_KEY = r"[A-Za-z_][A-Za-z0-9_]*(?:[./][A-Za-z_][A-Za-z0-9_]*)*"
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?)\b"
_FOLLOW = (rf"(?=\.?(?:\s*$|\s*[;|)\]}}]|\s*,(?!\d)|\s+-\s|\s+[\[(]|\s+['\"]?{_KEY}['\"]?\s*[:=]"
           r"|\s+(?:epoch|step|iter|iteration|batch)\s+\d))")
PAIR = re.compile(rf"(?:^|(?<=[\s,;|(\[{{]))(?P<q>['\"]?)(?P<key>{_KEY})(?P=q)\s*[:=]\s*(?P<value>{_NUM}){_FOLLOW}",
                  re.IGNORECASE)
POSITION = re.compile(r"(?:^|(?<=[\s,;|(\[{]))(?P<key>epoch|step|iter|iteration|batch)\s+(?P<value>\d+)"
                      r"(?:\s*/\s*(?P<total>\d+))?(?![\w.%/])", re.IGNORECASE)
ALIASES = {"lr": "learning_rate", "acc": "accuracy", "val_loss": "validation_loss", "val_acc": "validation_accuracy",
           "val_accuracy": "validation_accuracy", "grad_norm": "gradient_norm"}
STEP_KEYS = frozenset({"step", "global_step", "iter", "iteration", "it"})
IGNORED = frozenset({"pid", "port", "version", "v_num", "seed"})
TOTALS = {"epoch": "total_epochs", "batch": "total_batches"}
MAX_SCAN = 4096  # a line is read up to here: a megabyte of progress bar costs no more than a screenful


class ScrapeError(ValueError):
    """A --scrape pattern that cannot work; shown to the user as one line."""


def compile_patterns(patterns: Iterable[str]) -> list[re.Pattern[str]]:
    """The user's patterns, checked: valid regexes, each with at least one named group."""
    compiled = []
    for text in patterns:
        try:
            rx = re.compile(text)
        except re.error as exc:
            raise ScrapeError(f"--scrape {text!r}: not a regular expression ({exc})") from None
        if not rx.groupindex:
            raise ScrapeError(f"--scrape {text!r}: name the values to keep, e.g. (?P<loss>[0-9.e+-]+)")
        compiled.append(rx)
    return compiled


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


class Scraper:
    """Turns output lines into metrics events; ``scan`` is called by both reader threads."""

    def __init__(self, patterns: Sequence[str] = ("",)) -> None:
        self.default = "" in patterns
        self.user = compile_patterns(p for p in patterns if p)
        self.step: int | None = None
        self.epoch: int | None = None
        self.batch: int | None = None
        self.totals: dict[str, int] = {}
        self.lines = 0
        self._lock = threading.Lock()

    def scan(self, lines: Iterable[str]) -> list[dict]:
        """The metrics events of these complete lines (most lines give none)."""
        events = []
        with self._lock:
            for line in lines:
                event = self._line(line)
                if event is not None:
                    events.append(event)
        return events

    def _line(self, line: str) -> dict | None:
        line = line[:MAX_SCAN]
        values: dict[str, float | str] = {}
        position: dict[str, int] = {}
        if self.default:
            self._default(line, values, position)
        for rx in self.user:
            match = rx.search(line)
            if match is not None:
                self._named(match, values, position)
        self._move(position)
        if not values:
            return None
        self.lines += 1
        step = self.step if self.step is not None else self.lines
        event = {"kind": "metrics", "t": time.time(), "src": "scrape", "step": step}
        if self.epoch is not None:
            event["epoch"] = self.epoch
        if self.batch is not None:
            event["batch"] = self.batch
        event["data"] = {**values, **self.totals}
        return event

    def _default(self, line: str, values: dict[str, float | str], position: dict[str, int]) -> None:
        if ":" not in line and "=" not in line and not POSITION.search(line):
            return
        for m in POSITION.finditer(line):
            key = m["key"].lower()
            position[key] = int(m["value"])
            if m["total"] and key in TOTALS:
                self.totals[TOTALS[key]] = int(m["total"])
        for m in PAIR.finditer(line):
            key = m["key"].lower()
            if key not in IGNORED:
                self._put(ALIASES.get(key, key), float(m["value"]), values, position)

    def _named(self, match: re.Match[str], values: dict[str, float | str], position: dict[str, int]) -> None:
        for key, text in match.groupdict().items():
            value = None if text is None else _float(text)
            if value is not None:
                self._put(key, value, values, position)

    @staticmethod
    def _put(key: str, value: float, values: dict[str, float | str], position: dict[str, int]) -> None:
        """A position key takes an integral value (a fractional epoch counts as the one it is in)."""
        if key in STEP_KEYS or key in ("epoch", "batch"):
            if math.isfinite(value) and (key == "epoch" or value.is_integer()):
                position["step" if key in STEP_KEYS else key] = int(value // 1)
            return
        values[key] = value if math.isfinite(value) else finite(value)

    def _move(self, position: dict[str, int]) -> None:
        for key in ("iter", "iteration"):
            if key in position:
                position.setdefault("step", position.pop(key))
        if "step" in position:
            self.step = position["step"]
        if "epoch" in position:
            self.epoch = position["epoch"]
        if "batch" in position:
            self.batch = position["batch"]


def make_scraper(patterns: Sequence[str]) -> Scraper | None:
    """None when scraping is off (no --scrape); ``""`` in ``patterns`` stands for the default pattern."""
    return Scraper(patterns) if patterns else None


def expand_cli_args(args: list[str], takes_value: frozenset[str]) -> list[str]:
    """Give a bare ``--scrape`` among tlog's own options an explicit value, so the parser never takes
    the script for a pattern: the next argument is the pattern only if it has a named group ``(?P<``.

    ``takes_value`` names tlog's options that take a value (their value is skipped); the scan stops at
    ``--`` or at the first argument that is not an option (the script: what follows is its own).
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--" or not arg.startswith("-"):
            return out + args[i:]
        if arg == "--scrape":
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is not None and "(?P<" in nxt:
                out.append(f"--scrape={nxt}")
                i += 2
                continue
            out.append("--scrape=")
        else:
            out.append(arg)
            if arg in takes_value and i + 1 < len(args):
                out.append(args[i + 1])
                i += 1
        i += 1
    return out
