"""Crash classifier: turns a failure record into a category, a phase and a cause a person can act on.

Pure functions over text and numbers, standard library only: this runs in the supervisor's crash path,
where importing anything heavy (or failing) would lose the diagnosis.  The knowledge lives in
``tlog.diagnosis.rules``, text layout in ``tlog.diagnosis.parse``; this module applies the rules, decides
the phase, and handles what leaves no traceback (SIGKILL and other signals, hangs).
"""

from __future__ import annotations

import signal as _signal
from dataclasses import dataclass, replace

from tlog.diagnosis import rules as R
from tlog.diagnosis.elastic import read_summary, silent_root
from tlog.diagnosis.parse import TRUNCATED, WRAPPERS, Exc, Frame, log_lines, parse, parse_stack, rx
from tlog.diagnosis.remedy import CATEGORY_REMEDY, remedy


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
    remedy: str = ""  # what to try first, concrete to the evidence

    def to_dict(self) -> dict:
        """JSON-ready form for events and ``tlog classify --json``."""
        return {"category": self.category, "phase": self.phase, "transient": self.transient,
                "cause": self.cause, "evidence": list(self.evidence), "rule": self.rule, "remedy": self.remedy}


# ---------------------------------------------------------------- phase

def normalise_phase(phase: str | None) -> str | None:
    """Probes and people spell phases differently ("backward", "eval"); rules and views want one name."""
    if not phase:
        return None
    key = phase.strip().lower().replace("-", "_").replace(" ", "_")
    return R.PHASE_ALIASES.get(key, key)


def infer_phase(frames: list[Frame]) -> tuple[str | None, Frame | None, bool]:
    """(phase, frame, strong): the deepest strong hint, else the deepest weak one (see ``FRAME_PHASES``).

    Only the innermost frame's source line counts: above it, the library frames below say what ran, so a
    one-line ``loss = F.mse_loss(m(x), y); loss.backward()`` that failed inside ``m`` is the forward pass.
    A library frame speaks for the function its module was entered through (``_entry_hint``), and a step
    (``LEAF_PHASES``) yields to a forward or loss below it: that is the closure the step ran.
    """
    weak: tuple[str, Frame] | None = None
    for depth, frame in enumerate(reversed(frames)):
        key = frame.key if depth == 0 else f"{frame.file}|{frame.func}|"
        hit = _entry_hint(frames, len(frames) - 1 - depth) or _hint(key)
        if hit and hit[1]:
            if hit[0] in R.LEAF_PHASES and weak:
                return weak[0], weak[1], False
            return hit[0], frame, True
        if hit and weak is None:
            weak = (hit[0], frame)
    return (weak[0], weak[1], False) if weak else (None, None, False)


def _hint(key: str) -> tuple[str, bool] | None:
    return next(((p, s) for p, s, pattern in R.FRAME_PHASES if rx(pattern).search(key)), None)


def _entry_hint(frames: list[Frame], i: int) -> tuple[str, bool] | None:
    """The hint of the outermost frame in the run of library frames of ``frames[i]``'s file, when that entry
    point names one: ``torch.save`` failing in the ``__exit__`` that closes its file is still a save, and an
    iterator built by ``iter(loader)`` is data loading, not the DataLoader's construction."""
    frame = frames[i]
    if not frame.library:
        return None
    j = i
    while j > 0 and frames[j - 1].file == frame.file:
        j -= 1
    return _hint(f"{frames[j].file}|{frames[j].func}|") if j < i else None


def _line_phase(texts: list[str]) -> tuple[str, str] | None:
    """(phase, line) from log lines and messages that name a loop ("Validation DataLoader 0: 40%")."""
    for text in reversed(texts):
        for phase, pattern in R.LINE_PHASES:
            if rx(pattern).search(text):
                return phase, text.strip()
    return None


# ---------------------------------------------------------------- matching

def _exc_matches(rule: R.Rule, exc: Exc) -> bool:
    """Type or message selects; frames and site narrow.  A rule with no condition at all matches anything."""
    if rule.frames and not any(rx(rule.frames).search(f.key) for f in exc.frames):
        return False
    if rule.innermost and not (exc.frames and rx(rule.innermost).search(exc.frames[-1].key)):
        return False
    if rule.site:
        site = exc.site()
        if site is None or not rx(rule.site).search(site.key):
            return False
    if not (rule.types or rule.message):
        return not rule.line
    return exc.short_type in rule.types or bool(rule.message and rx(rule.message).search(_said(exc)))


def _said(exc: Exc) -> str:
    """The exception's text, plus the ``raise`` statement that made it: a cut-off log may end mid-message."""
    source = exc.frames[-1].source if exc.frames else ""
    return f"{exc.text}\n{exc.short_type}: {source}" if source.startswith("raise ") else exc.text


def _match(excs: list[Exc], lines: list[tuple[str, str]]) -> tuple[R.Rule, Exc | None, str, str] | None:
    """Rule-major: the most specific family anywhere in the failure beats a generic one at the root."""
    told = any(e.message.strip() or e.type != TRUNCATED for e in excs)  # cut before its message: read lines
    for rule in R.RULES:
        for exc in excs:
            if _exc_matches(rule, exc):
                return rule, exc, exc.where, exc.text
        line_rx = rule.line or ("" if told else rule.message)
        if line_rx:
            for where, line in lines:
                if rx(line_rx).search(line):
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
    for template, pattern in rule.facts:
        m = rx(pattern).search(text)
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
              excs: list[Exc], lines: list[tuple[str, str]]) -> Diagnosis:
    frames = exc.frames if exc and exc.frames else next((e.frames for e in excs if e.frames), [])
    inferred, phase_frame, strong = infer_phase(frames)
    probe = normalise_phase(record.phase)
    from_lines = None if strong or probe else _line_phase([e.text for e in excs] + [t for _, t in lines])
    if from_lines:
        inferred, phase_frame, strong = from_lines[0], None, True
    refined = bool(probe and inferred and inferred != probe
                   and ((strong and probe not in R.ENCLOSING_PHASES) or probe in R.COARSE_PHASES
                        or (probe, inferred) in R.PHASE_REFINEMENTS))
    phase = inferred if refined else probe or inferred or rule.phase
    category = rule.category
    by_phase = R.PHASE_CATEGORY.get(phase or "")
    if rule.by_phase and by_phase and (by_phase != R.CONFIG or rule.category == R.UNKNOWN):
        category = by_phase
    evidence = [f"rule {rule.name} matched {where}: {_head(hit)}", f"why: {rule.reason}"]
    if probe and not refined:
        evidence.append(f"phase {probe} reported by the probe")
    elif from_lines:
        evidence.append(f"phase {inferred} inferred from the output: {_head(from_lines[1])}")
    elif inferred and phase_frame:
        evidence.append(f"phase {inferred} inferred from frame {phase_frame.short()}"
                        + (f": {phase_frame.source}" if phase_frame.source else "")
                        + (f" (finer than the probe's {probe})" if refined else ""))
    site = exc.site() if exc else None
    if site:
        evidence.append(f"raised at {site.short()}" + (f": {site.source}" if site.source else ""))
    summary = rule.summary or (exc.short_type if exc else "error")
    detail = _facts(rule, hit) or _head(exc.message if exc else hit)
    transient = R.restartable(rule) if category == rule.category else category in R.TRANSIENT
    return Diagnosis(category, phase, transient, _cause(summary, phase, record, site, detail),
                     tuple(evidence), rule.name, remedy(rule, category, exc, _said(exc) if exc else hit,
                                                     record.samples))


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
    """(RSS/limit at the end, short trend for the cause, timeline of the last samples for the evidence)."""
    rows = [s for s in samples if isinstance(s, dict) and isinstance(s.get("rss_bytes"), (int, float))][-6:]
    if not rows:
        return None, "", ""
    limit = next((s.get("mem_limit_bytes") or s.get("mem_total_bytes") for s in reversed(rows)
                  if s.get("mem_limit_bytes") or s.get("mem_total_bytes")), None)
    times = [s.get("t") if isinstance(s.get("t"), (int, float)) else None for s in rows]
    points = [(f"{t - times[-1]:+.0f}s " if t is not None and times[-1] is not None else "")
              + _human_bytes(s["rss_bytes"]) for t, s in zip(times, rows, strict=True)]
    ratio = rows[-1]["rss_bytes"] / limit if limit else None
    first, last = times[0], times[-1]
    span = f" over {last - first:.0f} s" if len(rows) > 1 and first is not None and last is not None else ""
    of = f", {ratio:.0%} of the {_human_bytes(limit)} limit" if limit and ratio is not None else ""
    short = "RSS " + " → ".join(_human_bytes(s["rss_bytes"]) for s in rows[-3:]) + span + of
    return ratio, short, "memory timeline: " + ", ".join(points) + (f" (limit {_human_bytes(limit)})" if limit else "")


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
    return Diagnosis(category, phase, category in R.TRANSIENT, cause, tuple(evidence), rule,
                     CATEGORY_REMEDY[category] if category == R.MEMORY else _KILLED_REMEDY)


_SIGNAL_REMEDY = "a native crash leaves a faulthandler stack in the output (tlog errors --traceback); " \
    "otherwise rerun with python -X faulthandler"
_KILLED_REMEDY = "find who sent SIGKILL (scheduler log, dmesg, a watchdog) before restarting"


def _by_exit(record: FailureRecord, sig: int | None, lines: list[tuple[str, str]]) -> Diagnosis:
    """Nothing in the output explained the failure: say what the exit status does tell."""
    phase = normalise_phase(record.phase)
    last = next((f"last output {w}: {_head(t)}" for w, t in reversed(lines) if t.strip()), "no output captured")
    if sig is not None:
        name = _signal_name(sig)
        summary = R.SIGNAL_CAUSES.get(name, f"killed by {name}")
        return Diagnosis(R.SYSTEM, phase, True, f"{summary}{_phase_words(phase)}{_position(record)}",
                         (f"died by {name} with no traceback", last), f"signal_{name.lower().replace(' ', '_')}",
                         _SIGNAL_REMEDY)
    code = "no exit status" if record.exit_code is None else f"exit code {record.exit_code}"
    cause = f"failed with {code}{_phase_words(phase)}{_position(record)} and no recognisable error in the output"
    return Diagnosis(R.UNKNOWN, phase, False, cause, (last,), "no_match",
                     f"nothing structural matched; start from the {last}" if lines else
                     "no output was captured; rerun with the output kept (tlog errors --traceback)")


# ---------------------------------------------------------------- hangs

def _hang(stack: str, phase: str | None, record: FailureRecord) -> Diagnosis:
    frames = parse_stack(stack)
    keys: list[tuple[str, Frame | None]] = [(f.key, f) for f in reversed(frames)]
    keys = keys or [(line, None) for line in reversed(stack.splitlines())]
    inferred, _, _ = infer_phase(frames)
    phase = normalise_phase(phase) or inferred
    for key, frame in keys:
        for name, category, summary, reason, pattern in R.HANG_RULES:
            if rx(pattern).search(key):
                at = frame.short() if frame else _head(key)
                return Diagnosis(category, phase, True,
                                 f"hung: {summary}{_phase_words(phase)}{_position(record)} ({at})",
                                 (f"rule {name} matched {at}", f"why: {reason}"), name, CATEGORY_REMEDY[category])
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
        for event in events:  # the hook's event carries no frames; borrow them from its printed traceback
            event.frames = next((e.frames for e in excs if e.short_type == event.short_type and e.frames), [])
        excs = sorted(events + excs, key=lambda e: bool(WRAPPERS.search(e.text)))
    lines = [(f"stderr line {n}", t) for n, t in enumerate(log_lines(record.stderr_tail or ""), 1)]
    sig = _death_signal(record)
    table = read_summary([t for _, t in lines])
    root = table.root if table else None
    if table and root:  # torchrun's table: its root entry decides, the torn-down ranks' lines do not
        drop = table.consequence_lines()
        lines = [line for i, line in enumerate(lines) if i not in drop]
        if root.signal and not any(not WRAPPERS.search(e.text) for e in excs):
            sig, excs = root.signal, []  # the root rank died by a signal, no exception but torchrun's own
    diagnosis = _classify(record, excs, lines, sig)
    if root is not None:
        how = f"signal {_signal_name(root.signal)}" if root.signal else f"exit code {root.exit_code}"
        others = ", ".join(f"rank {e.rank}" for e in table.entries if not e.root) if table else ""
        told = f"torchrun's failure table: root cause rank {root.rank} ({how})" + (
            f"; {others} ended after it" if others else "")
        diagnosis = replace(diagnosis, evidence=(*diagnosis.evidence, told))
        if diagnosis.category == R.UNKNOWN and not root.signal:
            cause, fix = silent_root(root)
            diagnosis = replace(diagnosis, cause=cause, remedy=fix)
    return diagnosis


def _classify(record: FailureRecord, excs: list[Exc], lines: list[tuple[str, str]], sig: int | None) -> Diagnosis:
    if sig == _signal.SIGKILL:
        return _killed(record, excs, lines)
    hit = _match(excs, lines)
    if hit is None:
        return _by_exit(record, sig, lines)
    return _diagnose(*hit, record, excs, lines)


def classify_text(text: str) -> Diagnosis:
    """Classify a pasted traceback or a whole log (Slurm output, torchrun logs with rank prefixes)."""
    return classify(FailureRecord(stderr_tail=text))


def classify_hang(stack: str, phase: str | None = None) -> Diagnosis:
    """Classify a stalled run from a stack dump of its threads; hangs are transient by convention."""
    return _hang(stack, phase, FailureRecord())
