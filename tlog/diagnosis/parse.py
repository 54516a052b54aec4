"""Reading tracebacks out of noisy output: chained exceptions, DataLoader re-raises, rank-prefixed logs,
C++ ``terminate`` messages, faulthandler dumps and py-spy stacks.

Separate from the classifier so the rules never see text layout, only exceptions with their frames.
Standard library only, like the classifier that calls it in the supervisor's crash path.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

_TB_START = re.compile(r"^(?P<prefix>.*?)(?:Original )?T?raceback \(most recent call last\):\s*$")
# IPython: "KeyError      Traceback (most recent call last)", frames "path in func(args)" or
# "File path:12, in func(args)", source "--> 12 code"; rich panels: "│ path:12 in func │", the path may wrap.
_IPY_START = re.compile(r"^\s*(?P<type>[A-Za-z_][\w.]*)\s{2,}Traceback \(most recent call last\)")
_IPY_FRAME = re.compile(r"^\s*(?:File (?P<file>\S.*?):(?P<line>\d+), in (?P<func>[\w.<>]+)|"
                        r"(?P<file2>(?:[A-Za-z]:)?[/\\~.]\S*\.py|<ipython-input-[^>]+>) in (?P<func2>[\w.<>]+))\(?")
_IPY_SOURCE = re.compile(r"^-+>\s*(?P<line>\d+)\s(?P<code>.*)$")
_RICH_BOX = re.compile(r"^\s*[│|]\s?(?P<body>.*?)\s*[│|]?\s*$")
_RICH_FRAME = re.compile(r"^(?P<file>(?:[A-Za-z]:)?[/\\~.]\S*\.py):(?P<line>\d+) in (?P<func>\w+)\s*$")
_RICH_SOURCE = re.compile(r"^❱\s*\d+\s[│\s]*(?P<code>.*)$")
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in(?: (?P<func>\S.*?))?\s*$')
_FH_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')
_PYSPY_FRAME = re.compile(r"^\s+(?P<func>\S+) \((?P<file>[^()]+):(?P<line>\d+)\)\s*$")
_CHAIN = re.compile(r"During handling of the above exception|The above exception was the direct cause")
_EXC_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::\s?(?P<msg>.*))?$")
_STRAY_EXC = re.compile(r"(?:^|[\s\]\)>:|])(?P<type>(?:[A-Za-z_]\w*\.)*_?[A-Z]\w*(?:Error|Exception|Interrupt|"
                        r"BadZipFile|Unsupported))(?::\s(?P<msg>.*)|\s*$)")
_EXC_NAME = re.compile(r"(?:^|\.)(?:_?[A-Z]\w*|\w*(?:error|timeout))$")
_STOP = re.compile(r"^(?:[\w.-]+: |\[|\d{4}-\d\d-\d\d|\s*\d+%\|)")
_FATAL = re.compile(r"Fatal Python error: (?P<msg>.+)")
_THREAD = re.compile(r"^(?P<current>Current thread|Thread) (?:0x[0-9a-fA-F]+|\d+).*:\s*$")
_TERMINATE = re.compile(r"terminate called after throwing an instance of '(?P<type>[^']+)'")
_WHAT = re.compile(r"^\s*what\(\):\s*(?P<msg>.*)$")
_LIBRARY = re.compile(r"site-packages|dist-packages|/lib/python\d|/lib/Python\d|<frozen|^<|/usr/lib/|/tlog/hook/")
WRAPPERS = re.compile(r"in DataLoader worker process|in replica \d+ on device|ChildFailedError|"
                      r"ProcessRaisedException|ProcessExitedException|BackendCompilerFailed")
_RANK_PREFIX = re.compile(r"^\s*\[?(?:rank|RANK)?\s*\d+\]?:")
_PREFIX_CUT = re.compile(r"[\]:|>-]")  # where a log prefix ends: "[rank3]:", "10:00:01,123 - ERROR -", "I1018 ...]"
_PREFIX_START = re.compile(r"[\[(\d]|[IWEF]\d")  # how a rank tag, a timestamp or a glog line begins
_PROSE = re.compile(r"\t|[A-Za-z]{2,} [A-Za-z]{2,}")  # message text, not a prefix
_UNIFORM = 0.9  # share of the non-blank lines a prefix must lead for it to be the log's, not the text's
TRUNCATED = "(traceback cut off)"
CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|[\x00-\x08\x0b\x0c\x0e-\x1f]")
_MAX_MESSAGE_LINES = 60
_IPY_HEADER = "\x00ipython-type "  # marks the type an IPython header named, for a traceback cut before its end


@dataclass(frozen=True, slots=True)
class Frame:
    file: str  # forward slashes, so one set of path patterns serves Windows tracebacks too
    line: int
    func: str
    source: str = ""

    @property
    def key(self) -> str:
        """One string per frame so rules can match path, function and code with a single regex."""
        return f"{self.file}|{self.func}|{self.source}"

    def short(self) -> str:
        return f"{self.file.rsplit('/', 1)[-1]}:{self.line} in {self.func}"

    @property
    def library(self) -> bool:
        """Installed or standard-library code (and tlog's own hook), not the user's."""
        return bool(_LIBRARY.search(self.file))


@dataclass(slots=True)
class Exc:
    type: str
    message: str
    where: str
    frames: list[Frame] = field(default_factory=list)

    @property
    def text(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type

    @property
    def short_type(self) -> str:
        return self.type.rsplit(".", 1)[-1].rsplit("::", 1)[-1]

    def site(self) -> Frame | None:
        """The deepest frame in the user's own code: where a practitioner would start reading."""
        return next((f for f in reversed(self.frames) if not f.library), None)


def _frame(m: re.Match[str]) -> Frame:
    return Frame(m["file"].replace("\\", "/"), int(m["line"]), m["func"] or "?")  # a paste may lose the name


@functools.cache
def rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


# ---------------------------------------------------------------- parsing

def _stripper(prefix: str):
    """Lines of one traceback share its prefix ("[rank0]:", a timestamp); digits may vary between lines."""
    loose = re.compile(re.sub(r"\d+", r"\\d+", re.escape(prefix))) if prefix.strip() else None

    def strip(line: str) -> str | None:
        if line.startswith(prefix):
            return line[len(prefix):]
        m = loose.match(line) if loose else None
        if m:
            return line[m.end():]
        return None if _RANK_PREFIX.match(line) else line
    return strip


def _exception_line(body: str) -> tuple[str, str] | None:
    """(type, message) when the line is shaped like "pkg.SomeError: text"; log lines like "INFO: x" are not."""
    m = _EXC_LINE.match(body)
    if not m or body[:1].isspace():
        return None
    name = m.group("type")
    if name.rsplit(".", 1)[-1].isupper():  # INFO:, WARNING:, ERROR: are log levels
        return None
    if m.group("msg") is None and not _EXC_NAME.search(name):
        return None
    if m.group("msg") is not None and not (_EXC_NAME.search(name) or "." in name):
        return None
    return name, m.group("msg") or ""


def _continuation(lines: list[str], i: int, strip) -> tuple[str, int]:
    """Message lines after the exception line: C++ frames, hints, state-dict key lists."""
    extra: list[str] = []
    while i < len(lines) and len(extra) < _MAX_MESSAGE_LINES:
        body = strip(lines[i])
        if body is None or not body.strip() or _TB_START.match(body) or _CHAIN.search(body) or _STOP.match(body):
            break
        extra.append(body.rstrip())
        i += 1
    return "\n".join(extra), i


def _read_traceback(lines: list[str], i: int, prefix: str, label: str) -> tuple[Exc | None, int]:
    """Frames, then the first unindented exception-shaped line; gives up after a few stray lines in a row.  The
    line after a frame is its source even unindented (pastes lose indentation)."""
    strip, frames, stray, header, after_frame = _stripper(prefix), [], 0, "", False
    while i < len(lines) and stray < 8:
        body = strip(lines[i])
        i += 1
        was_after_frame, after_frame = after_frame, False
        if body is None or not body.strip():
            stray += 1
        elif body.startswith(_IPY_HEADER):
            header = body[len(_IPY_HEADER):]
        elif fm := _FRAME.match(body):
            frames.append(_frame(fm))
            stray, after_frame = 0, True
        elif exc := _exception_line(body):
            rest, end = _continuation(lines, i, strip)
            return Exc(exc[0], exc[1] + ("\n" + rest if rest else ""), f"{label} line {i}", frames), end
        elif frames and (body[:1].isspace() or was_after_frame):
            if not frames[-1].source and not set(body.strip()) <= set("^~ "):
                frames[-1] = Frame(frames[-1].file, frames[-1].line, frames[-1].func, body.strip())
        else:
            stray += 1
    if frames or header:  # cut off before its exception line: the frames still say where it failed
        return Exc(header or TRUNCATED, "", f"{label} line {i}", frames), i
    return None, i


def _read_faulthandler(lines: list[str], i: int, label: str) -> tuple[Exc, int]:
    """'Fatal Python error: X' plus the crashing thread's frames (most recent first, so reversed)."""
    fatal = _FATAL.search(lines[i])
    exc = Exc("Fatal Python error", fatal["msg"].strip() if fatal else "", f"{label} line {i + 1}")
    blocks = [j for j in range(i + 1, min(len(lines), i + 400)) if _THREAD.match(lines[j].strip())]
    current = [j for j in blocks if lines[j].strip().startswith("Current")]
    start = (current or blocks or [len(lines)])[0] + 1
    j = start
    while j < len(lines) and (m := _FH_FRAME.match(lines[j])):
        exc.frames.insert(0, _frame(m))
        j += 1
    return exc, (j if start > i + 1 else i + 1)


def _read_stray(lines: list[str], i: int, label: str) -> tuple[Exc | None, int]:
    """An exception line outside any traceback (pasted excerpts, log lines, C++ terminate messages)."""
    line = lines[i]
    if m := _FATAL.search(line):
        return _read_faulthandler(lines, i, label)
    if (m := _TERMINATE.search(line)) and i + 1 < len(lines) and (w := _WHAT.match(lines[i + 1])):
        rest, end = _continuation(lines, i + 2, lambda s: s)
        return Exc(m["type"], w["msg"] + ("\n" + rest if rest else ""), f"{label} line {i + 1}"), end
    m = _STRAY_EXC.search(line)
    if not m:
        return None, i + 1
    j, extra = i + 1, []
    while j < len(lines) and lines[j][:1].isspace() and lines[j].strip() and not _FRAME.match(lines[j]):
        extra.append(lines[j].strip())
        j += 1
    message = (m["msg"] or "") + ("\n" + "\n".join(extra) if extra else "")
    return Exc(m["type"], message, f"{label} line {i + 1}"), j


def _normalise(lines: list[str]) -> list[str]:
    """IPython and rich-panel tracebacks rewritten as Python prints them, so one reader serves all three."""
    out: list[str] = []
    pending = ""  # a rich panel wraps a long "path:line in func" onto the next line
    for line in lines:
        if m := _IPY_START.match(line):
            out.append("Traceback (most recent call last):")
            out.append(f"{_IPY_HEADER}{m['type']}")
            continue
        if line.lstrip().startswith(("╭", "╰")):
            continue
        box = _RICH_BOX.match(line) if line.lstrip().startswith("│") else None
        if box:
            body = pending + box["body"].strip()
            pending = ""
            if m := _RICH_FRAME.match(body):
                out.append(f'  File "{m["file"]}", line {m["line"]}, in {m["func"]}')
            elif body.endswith(".py:") or (body.endswith(".py") and "/" in body):
                pending = body
            elif m := _RICH_SOURCE.match(body):
                out.append("    " + m["code"].replace("│", " ").strip())
            continue
        if m := _IPY_FRAME.match(line):
            file, func = m["file"] or m["file2"], m["func"] or m["func2"]
            out.append(f'  File "{file}", line {m["line"] or 0}, in {func}')
        elif m := _IPY_SOURCE.match(line):
            out.append("    " + m["code"].strip())
        elif re.match(r"^\s+\d+\s", line) and out and out[-1].startswith(("  File", "    ")):
            continue  # IPython context lines around the one that ran
        else:
            out.append(line)
    return out


def _uniform_prefix(lines: list[str]) -> re.Pattern[str] | None:
    """A prefix that leads nearly every line (one rank's ``[rank3]:``, a logger's timestamp and level), digits
    loose: stripped before reading, so an excerpt pasted from mid-stack, with no ``Traceback`` line to learn the
    prefix from, still shows its frames.  It must begin like one (``_PREFIX_START``), so a repetitive message
    (a state dict's key list) and indentation stay."""
    body = [line for line in lines if line.strip()]
    if len(body) < 3:
        return None
    first = body[0]
    for cut in sorted((m.end() for m in _PREFIX_CUT.finditer(first[:80])), reverse=True):
        head = first[:cut]
        if not _PREFIX_START.match(head) or _PROSE.search(head):
            continue
        loose = re.compile(re.sub(r"\d+", r"\\d+", re.escape(head)) + " ?")  # and the space that follows it
        if sum(1 for line in body if loose.match(line)) >= _UNIFORM * len(body):
            return loose
    return None


def log_lines(text: str) -> list[str]:
    """The output's lines as the program printed them: colours and control characters gone, and a prefix that
    leads nearly every line (``_uniform_prefix``) taken off, so rules and the torchrun table reader see one
    layout."""
    raw = CONTROL.sub("", text).splitlines()
    prefix = _uniform_prefix(raw)
    return [prefix.sub("", line, count=1) for line in raw] if prefix is not None else raw


def parse(text: str, label: str = "text") -> list[Exc]:
    """All exceptions in a blob of output, root cause first: chains oldest first, and an exception
    re-raised by a wrapper (DataLoader worker, torchrun, mp.spawn) after the original it wraps."""
    lines = _normalise(log_lines(text))
    found: list[Exc] = []
    i = 0
    while i < len(lines):
        tb = _TB_START.match(lines[i])
        if tb or _FRAME.match(lines[i]):
            prefix = tb["prefix"] if tb else ""
            exc, i = _read_traceback(lines, i + 1 if tb else i, prefix, label)
        else:
            exc, i = _read_stray(lines, i, label)
        if exc is not None:
            found.append(exc)
    return sorted(found, key=lambda e: bool(WRAPPERS.search(e.text)))


def parse_stack(stack: str) -> list[Frame]:
    """Frames of the main thread, oldest first, from faulthandler, traceback or py-spy dumps.  faulthandler
    lists the main thread last and py-spy names it; both print the innermost frame first."""
    blocks: list[tuple[str, list[str]]] = [("", [])]
    for line in stack.splitlines():
        if _THREAD.match(line.strip()) or re.match(r"^Thread \d+ \(\w+\)", line.strip()):
            blocks.append((line, []))
        else:
            blocks[-1][1].append(line)
    named = [b for b in blocks if "MainThread" in b[0]]
    frames: list[Frame] = []
    innermost_first = False
    for line in (named[0] if named else blocks[-1])[1]:
        if m := _FRAME.match(line):
            frames.append(_frame(m))
        elif m := _FH_FRAME.match(line) or _PYSPY_FRAME.match(line):
            frames.append(_frame(m))
            innermost_first = True
        elif frames and line.startswith("    ") and not frames[-1].source:
            frames[-1] = Frame(frames[-1].file, frames[-1].line, frames[-1].func, line.strip())
    return frames[::-1] if innermost_first else frames
