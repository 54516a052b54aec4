"""Crash classifier: turns a failure record into a category, a phase and a cause a person can act on.

Pure functions over text and numbers, standard library only: this runs in the supervisor's crash path,
where importing anything heavy (or failing) would lose the diagnosis.  The knowledge lives in
``tlog.classify_rules``; this module parses tracebacks out of noisy output and applies the rules.
"""

from __future__ import annotations

import functools
import re
import signal as _signal
from dataclasses import dataclass, field

from tlog import classify_rules as R

_TB_START = re.compile(r"^(?P<prefix>.*?)(?:Original )?Traceback \(most recent call last\):\s*$")
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S.*?)\s*$')
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
_LIBRARY = re.compile(r"site-packages|dist-packages|/lib/python\d|/lib/Python\d|<frozen|^<|/usr/lib/")
_WRAPPERS = re.compile(r"in DataLoader worker process|ChildFailedError|ProcessRaisedException|ProcessExitedException")
_RANK_PREFIX = re.compile(r"^\s*\[?(?:rank|RANK)?\s*\d+\]?:")
_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|[\x00-\x08\x0b\x0c\x0e-\x1f]")
_MAX_MESSAGE_LINES = 60


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """Everything the supervisor knows about a failed attempt; every field is optional."""

    exc_type: str | None = None
    message: str | None = None
    traceback: str | None = None
    chain: tuple[dict, ...] = ()
    exit_code: int | None = None
    signal: int | None = None
    stderr_tail: str = ""
    phase: str | None = None
    epoch: int | None = None
    batch: int | None = None
    step: int | None = None
    samples: tuple[dict, ...] = ()
    oom_kill_delta: int | None = None
    hang_stack: str | None = None


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """The verdict: ``transient`` answers "would a restart help?", ``rule`` names the row that decided."""

    category: str
    phase: str | None
    transient: bool
    cause: str
    evidence: tuple[str, ...]
    rule: str

    def to_dict(self) -> dict:
        """JSON-ready form for events and ``tlog classify --json``."""
        return {"category": self.category, "phase": self.phase, "transient": self.transient,
                "cause": self.cause, "evidence": list(self.evidence), "rule": self.rule}


@dataclass(frozen=True, slots=True)
class Frame:
    file: str
    line: int
    func: str
    source: str = ""

    @property
    def key(self) -> str:
        """One string per frame so rules can match path, function and code with a single regex."""
        return f"{self.file.replace(chr(92), '/')}|{self.func}|{self.source}"

    @property
    def user(self) -> bool:
        return not _LIBRARY.search(self.file.replace("\\", "/"))

    def short(self) -> str:
        name = self.file.replace("\\", "/").rsplit("/", 1)[-1]
        return f"{name}:{self.line} in {self.func}"


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
        return next((f for f in reversed(self.frames) if f.user), None)


@functools.cache
def _rx(pattern: str) -> re.Pattern[str]:
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
    m = _EXC_LINE.match(body)
    if not m or body[:1].isspace():
        return None
    name = m.group("type")
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
    strip, frames, foreign = _stripper(prefix), [], 0
    while i < len(lines) and foreign < 20:
        body = strip(lines[i])
        if body is None or not body.strip():
            foreign += body is None
            i += 1
            continue
        fm = _FRAME.match(body)
        if fm:
            frames.append(Frame(fm["file"], int(fm["line"]), fm["func"]))
            i += 1
            continue
        exc = _exception_line(body)
        if exc is None:
            if frames and not frames[-1].source and not set(body.strip()) <= set("^~ "):
                frames[-1] = Frame(frames[-1].file, frames[-1].line, frames[-1].func, body.strip())
            i += 1
            continue
        rest, end = _continuation(lines, i + 1, strip)
        message = exc[1] + ("\n" + rest if rest else "")
        return Exc(exc[0], message, f"{label} line {i + 1}", frames), end
    return None, i


def _read_faulthandler(lines: list[str], i: int, label: str) -> tuple[Exc, int]:
    """'Fatal Python error: X' plus the crashing thread's frames (most recent first, so reversed)."""
    exc = Exc("Fatal Python error", _FATAL.search(lines[i])["msg"].strip(), f"{label} line {i + 1}")
    blocks = [j for j in range(i + 1, min(len(lines), i + 400)) if _THREAD.match(lines[j].strip())]
    current = [j for j in blocks if lines[j].strip().startswith("Current")]
    start = (current or blocks or [len(lines)])[0] + 1
    j = start
    while j < len(lines) and (m := _FH_FRAME.match(lines[j])):
        exc.frames.insert(0, Frame(m["file"], int(m["line"]), m["func"]))
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


def parse(text: str, label: str = "text") -> list[Exc]:
    """All exceptions in a blob of output, root cause first: chains oldest first, and an exception
    re-raised by a wrapper (DataLoader worker, torchrun, mp.spawn) after the original it wraps."""
    lines = _CONTROL.sub("", text).splitlines()
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
    return sorted(found, key=lambda e: bool(_WRAPPERS.search(e.text)))


# ---------------------------------------------------------------- phase

def normalise_phase(phase: str | None) -> str | None:
    if not phase:
        return None
    key = phase.strip().lower().replace("-", "_").replace(" ", "_")
    return R.PHASE_ALIASES.get(key, key)


def infer_phase(frames: list[Frame]) -> tuple[str | None, Frame | None]:
    """Deepest strong hint, else deepest weak hint (see ``FRAME_PHASES``)."""
    weak: tuple[str, Frame] | None = None
    for frame in reversed(frames):
        key = frame.key
        hit = next(((p, s) for p, s, rx in R.FRAME_PHASES if _rx(rx).search(key)), None)
        if hit and hit[1]:
            return hit[0], frame
        if hit and weak is None:
            weak = (hit[0], frame)
    return weak if weak else (None, None)


# ---------------------------------------------------------------- matching

def _exc_matches(rule: R.Rule, exc: Exc) -> bool:
    """Type or message selects; frames and site narrow.  A rule with no condition at all matches anything."""
    if rule.frames and not any(_rx(rule.frames).search(f.key) for f in exc.frames):
        return False
    if rule.site:
        site = exc.site()
        if site is None or not _rx(rule.site).search(site.key):
            return False
    if not (rule.types or rule.message):
        return not rule.line
    return exc.short_type in rule.types or bool(rule.message and _rx(rule.message).search(exc.text))


def _match(excs: list[Exc], lines: list[tuple[str, str]]) -> tuple[R.Rule, Exc | None, str, str] | None:
    """Rule-major: the most specific family anywhere in the failure beats a generic one at the root."""
    for rule in R.RULES:
        for exc in excs:
            if _exc_matches(rule, exc):
                return rule, exc, exc.where, exc.text
        line_rx = rule.line or ("" if excs else rule.message)
        if line_rx:
            for where, line in lines:
                if _rx(line_rx).search(line):
                    return rule, None, where, line.strip()
    return None


def _head(text: str, limit: int = 200) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def _facts(rule: R.Rule, text: str) -> str:
    out: list[str] = []
    for template, rx in rule.facts:
        m = _rx(rx).search(text)
        if m:
            value = m.group(1)
            out.append(template.replace("{bytes}", _human_bytes(int(value))) if "{bytes}" in template
                       else template.format(value))
    return ", ".join(dict.fromkeys(out))


def _position(record: FailureRecord) -> str:
    parts = [f"{k} {v}" for k, v in (("epoch", record.epoch), ("batch", record.batch)) if v is not None]
    if not parts and record.step is not None:
        parts = [f"step {record.step}"]
    return f" at {', '.join(parts)}" if parts else ""


def _phase_words(phase: str | None) -> str:
    return f" {R.PHASE_WORDS.get(phase, f'in {phase}')}" if phase else ""


def _cause(summary: str, phase: str | None, record: FailureRecord, site: Frame | None, detail: str) -> str:
    where = f" ({site.short()})" if site else ""
    return f"{summary}{_phase_words(phase)}{_position(record)}{where}" + (f": {detail}" if detail else "")


def _diagnose(rule: R.Rule, exc: Exc | None, where: str, hit: str, record: FailureRecord,
              excs: list[Exc]) -> Diagnosis:
    frames = exc.frames if exc and exc.frames else next((e.frames for e in excs if e.frames), [])
    inferred, phase_frame = infer_phase(frames)
    probe = normalise_phase(record.phase)
    phase = probe or inferred or rule.phase
    category = rule.category
    by_phase = R.PHASE_CATEGORY.get(phase or "")
    if rule.by_phase and by_phase and (by_phase != R.CONFIG or rule.category == R.UNKNOWN):
        category = by_phase
    evidence = [f"rule {rule.name} matched {where}: {_head(hit)}", f"why: {rule.reason}"]
    if probe:
        evidence.append(f"phase {probe} reported by the probe")
    elif inferred and phase_frame:
        evidence.append(f"phase {inferred} inferred from frame {phase_frame.short()}"
                        + (f": {phase_frame.source}" if phase_frame.source else ""))
    site = exc.site() if exc else None
    if site:
        evidence.append(f"raised at {site.short()}" + (f": {site.source}" if site.source else ""))
    summary = rule.summary or (exc.short_type if exc else "error")
    detail = _facts(rule, hit) or _head(exc.message if exc else hit)
    return Diagnosis(category, phase, category in R.TRANSIENT, _cause(summary, phase, record, site, detail),
                     tuple(evidence), rule.name)


# ---------------------------------------------------------------- signals and memory

def _signal_name(sig: int) -> str:
    try:
        return _signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _death_signal(record: FailureRecord) -> int | None:
    """Popen reports -N, shells report 128+N: both mean death by signal N."""
    if record.signal:
        return record.signal
    code = record.exit_code
    if code is not None and code < 0:
        return -code
    return code - 128 if code is not None and 128 < code <= 128 + 64 else None


def _memory(samples: tuple[dict, ...]) -> tuple[float | None, str, str]:
    """(RSS/limit at the end, short timeline for the cause, full timeline for the evidence)."""
    rows = [s for s in samples if isinstance(s.get("rss_bytes"), (int, float))][-6:]
    if not rows:
        return None, "", ""
    limit = next((s.get("mem_limit_bytes") or s.get("mem_total_bytes") for s in reversed(rows)
                  if s.get("mem_limit_bytes") or s.get("mem_total_bytes")), None)
    end_t = rows[-1].get("t")
    points = []
    for s in rows:
        t = s.get("t")
        rel = f"{t - end_t:+.0f}s " if isinstance(t, (int, float)) and isinstance(end_t, (int, float)) else ""
        points.append(f"{rel}{_human_bytes(s['rss_bytes'])}")
    ratio = rows[-1]["rss_bytes"] / limit if limit else None
    of = f" of the {_human_bytes(limit)} limit" if limit else ""
    pct = f" ({ratio:.0%})" if ratio is not None else ""
    span = ""
    if len(rows) > 1 and isinstance(rows[0].get("t"), (int, float)) and isinstance(end_t, (int, float)):
        span = f" over the last {end_t - rows[0]['t']:.0f} s"
    short = "RSS " + "→".join(_human_bytes(s["rss_bytes"]) for s in rows[-3:]) + f"{span}{of}{pct}"
    return ratio, short, "memory timeline: " + ", ".join(points) + of


def _killed(record: FailureRecord, excs: list[Exc], lines: list[tuple[str, str]]) -> Diagnosis:
    """SIGKILL leaves no traceback: the cgroup counter, then RSS against the limit, then log lines decide."""
    ratio, short, timeline = _memory(record.samples)
    delta = record.oom_kill_delta
    evidence = [f"oom_kill counter +{delta}" if delta is not None else "oom_kill counter unavailable"]
    evidence += [timeline] if timeline else ["no memory samples"]
    if delta:
        rule, category, summary = "sigkill_oom_counter", R.MEMORY, "killed by the kernel OOM killer"
    elif delta is None and ratio is not None and ratio >= 0.9:
        rule, category, summary = "sigkill_rss_near_limit", R.MEMORY, "killed by SIGKILL, probably the OOM killer"
    elif delta is None and (hit := _match(excs, lines)) and hit[0].category == R.MEMORY:
        rule, category, summary = hit[0].name, R.MEMORY, hit[0].summary
        evidence.insert(0, f"rule {hit[0].name} matched {hit[2]}: {_head(hit[3])}")
    else:
        why = ("the cgroup oom_kill counter did not change" if delta == 0 else
               f"RSS ended at {ratio:.0%} of the limit" if ratio is not None else
               "no oom_kill counter or memory samples point to it")
        rule, category, summary = "sigkill_external", R.SYSTEM, f"killed by SIGKILL (not the OOM killer: {why})"
    phase = normalise_phase(record.phase)
    cause = f"{summary}{_phase_words(phase)}{_position(record)}" + (f": {short}" if short else "")
    return Diagnosis(category, phase, category in R.TRANSIENT, cause, tuple(evidence), rule)


def _by_exit(record: FailureRecord, sig: int | None, lines: list[tuple[str, str]]) -> Diagnosis:
    """Nothing in the output explained the failure: say what the exit status does tell."""
    phase = normalise_phase(record.phase)
    last = next((f"last output {w}: {_head(t)}" for w, t in reversed(lines) if t.strip()), "no output captured")
    if sig is not None:
        name = _signal_name(sig)
        summary = R.SIGNAL_CAUSES.get(name, f"killed by {name}")
        return Diagnosis(R.SYSTEM, phase, True, f"{summary}{_phase_words(phase)}{_position(record)}",
                         (f"died by {name} with no traceback", last), f"signal_{name.lower().replace(' ', '_')}")
    code = "no exit status" if record.exit_code is None else f"exit code {record.exit_code}"
    cause = f"failed with {code}{_phase_words(phase)}{_position(record)} and no recognisable error in the output"
    return Diagnosis(R.UNKNOWN, phase, False, cause, (last,), "no_match")


# ---------------------------------------------------------------- hangs

def _hang_frames(stack: str) -> list[Frame]:
    """Frames of the main thread, oldest first, from faulthandler, traceback or py-spy dumps."""
    blocks: list[tuple[str, list[str]]] = [("", [])]
    for line in stack.splitlines():
        if _THREAD.match(line.strip()) or re.match(r"^Thread \d+ \(\w+\)", line.strip()):
            blocks.append((line, []))
        else:
            blocks[-1][1].append(line)
    named = [b for b in blocks if "MainThread" in b[0]]
    header, body = named[0] if named else blocks[-1]
    frames: list[Frame] = []
    for line in body:
        if m := _FRAME.match(line) or _FH_FRAME.match(line) or _PYSPY_FRAME.match(line):
            frames.append(Frame(m["file"], int(m["line"]), m["func"]))
        elif frames and line.startswith("    ") and not frames[-1].source:
            frames[-1] = Frame(frames[-1].file, frames[-1].line, frames[-1].func, line.strip())
    most_recent_first = "most recent call first" in header or bool(_PYSPY_FRAME.match(next(iter(body), "")))
    return frames[::-1] if most_recent_first or (header and "Thread" in header and "(" in header) else frames


def _hang(stack: str, phase: str | None, record: FailureRecord) -> Diagnosis:
    frames = _hang_frames(stack)
    keys = [(f.key, f) for f in reversed(frames)] or [(line, None) for line in reversed(stack.splitlines())]
    inferred, _ = infer_phase(frames)
    phase = normalise_phase(phase) or inferred
    for key, frame in keys:
        for name, category, summary, reason, rx in R.HANG_RULES:
            if _rx(rx).search(key):
                at = frame.short() if frame else _head(key)
                return Diagnosis(category, phase, True,
                                 f"hung: {summary}{_phase_words(phase)}{_position(record)} ({at})",
                                 (f"rule {name} matched {at}", f"why: {reason}"), name)
    at = frames[-1].short() if frames else "no frames in the stack dump"
    return Diagnosis(R.SYSTEM, phase, True, f"hung: no progress{_phase_words(phase)}{_position(record)} ({at})",
                     (f"innermost frame of the main thread: {at}",
                      "why: not in a collective or a DataLoader wait, so the cause is outside the training loop"),
                     "hang_other")


# ---------------------------------------------------------------- public API

def classify(record: FailureRecord) -> Diagnosis:
    """Classify one failed attempt; never raises on odd input, since it runs while handling a crash."""
    if record.hang_stack:
        return _hang(record.hang_stack, record.phase, record)
    excs = parse(record.traceback or "", "traceback") + parse(record.stderr_tail or "", "stderr")
    if record.exc_type:
        events = [Exc(str(c.get("type") or "Exception"), str(c.get("message") or ""), "crash event chain")
                  for c in record.chain if isinstance(c, dict)]
        events.append(Exc(record.exc_type, record.message or "", "crash event"))
        excs = sorted(events + excs, key=lambda e: bool(_WRAPPERS.search(e.text)))
    lines = [(f"stderr line {n}", t) for n, t in enumerate(_CONTROL.sub("", record.stderr_tail or "").splitlines(), 1)]
    sig = _death_signal(record)
    if sig == _signal.SIGKILL:
        return _killed(record, excs, lines)
    hit = _match(excs, lines)
    if hit is None:
        return _by_exit(record, sig, lines)
    return _diagnose(*hit, record, excs)


def classify_text(text: str) -> Diagnosis:
    """Classify a pasted traceback or a whole log (Slurm output, torchrun logs with rank prefixes)."""
    return classify(FailureRecord(stderr_tail=text))


def classify_hang(stack: str, phase: str | None = None) -> Diagnosis:
    """Classify a stalled run from a stack dump of its threads; hangs are transient by convention."""
    return _hang(stack, phase, FailureRecord())
