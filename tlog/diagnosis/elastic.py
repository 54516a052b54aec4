"""torchrun's ChildFailedError summary table, read as structure: which rank it names as the root cause,
how that rank ended, and which lines only describe the other ranks' consequences.

The table (torch.distributed.elastic's ``ChildFailedError``) lists ``Failures:`` — usually the ranks the
agent tore down after the first failure, SIGTERM'd — and ``Root Cause (first observed failure):``.  A rule
that read the whole output would take a torn-down rank's "Signal 15 (SIGTERM) received" for the cause;
the classifier reads the root entry instead and ignores the others' lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEADER = re.compile(r"ChildFailedError")
_SECTION = re.compile(r"^\s*(?P<name>Failures|Root Cause(?: \(first observed failure\))?):\s*$")
_ENTRY = re.compile(r"^\s*\[(?P<n>\d+)\]:\s*$")
_FIELD = re.compile(r"^\s*(?P<key>time|host|rank|exitcode|error_file|traceback)\s*:\s?(?P<value>.*)$")
_EXIT = re.compile(r"^(?P<code>-?\d+)")
_RANK = re.compile(r"^(?P<rank>\d+)")
_END = re.compile(r"^\s*={10,}\s*$")


@dataclass(frozen=True)
class Entry:
    root: bool  # listed under "Root Cause"
    rank: int | None
    exit_code: int | None  # negative: killed by that signal, as torchrun reports it
    traceback: str  # "Signal 11 (SIGSEGV) received by PID 7", "To enable traceback see: ...", or an error file's
    lines: tuple[int, ...]  # indices of this entry's lines in the text

    @property
    def signal(self) -> int | None:
        return -self.exit_code if self.exit_code is not None and self.exit_code < 0 else None


@dataclass(frozen=True)
class Summary:
    entries: tuple[Entry, ...]

    @property
    def root(self) -> Entry | None:
        return next((e for e in self.entries if e.root), None)

    def consequence_lines(self) -> frozenset[int]:
        """Lines of the entries that are not the root cause (only when the table names a root)."""
        if self.root is None:
            return frozenset()
        return frozenset(i for e in self.entries if not e.root for i in e.lines)


def read_summary(lines: list[str]) -> Summary | None:
    """The last ChildFailedError table in ``lines`` (output lines, control characters already stripped)."""
    start = next((i for i in range(len(lines) - 1, -1, -1) if _HEADER.search(lines[i])), None)
    if start is None:
        return None
    entries: list[Entry] = []
    root = False
    current: dict | None = None

    def close() -> None:
        if current is not None:
            entries.append(Entry(root=current["root"], rank=current.get("rank"), exit_code=current.get("exit"),
                                 traceback=current.get("traceback", ""), lines=tuple(current["lines"])))

    for i in range(start + 1, len(lines)):
        line = lines[i]
        if m := _SECTION.match(line):
            close()
            current, root = None, m["name"].startswith("Root")
        elif _ENTRY.match(line):
            close()
            current = {"root": root, "lines": [i]}
        elif current is not None and (m := _FIELD.match(line)):
            current["lines"].append(i)
            value = m["value"].strip()
            if m["key"] == "rank" and (r := _RANK.match(value)):
                current["rank"] = int(r["rank"])
            elif m["key"] == "exitcode" and (x := _EXIT.match(value)):
                current["exit"] = int(x["code"])
            elif m["key"] == "traceback":
                current["traceback"] = value
        elif _END.match(line) and (entries or current is not None):
            break  # the table's closing rule
    close()
    return Summary(tuple(entries)) if entries else None


def silent_root(entry: Entry) -> tuple[str, str]:
    """(cause, remedy) when the table's root-cause rank exited with an error that is not in the output: torchrun
    prints a rank's traceback only when the script records it, so the rank's own output is where it is."""
    rank = "a rank" if entry.rank is None else f"rank {entry.rank}"
    code = "" if entry.exit_code is None else f" with exit code {entry.exit_code}"
    return (f"{rank} failed{code}; its error is not in this output (torchrun's failure table names it the root "
            "cause)",
            f"read {rank}'s own output (torchrun --tee 3 or --log-dir keeps it), or decorate the script's main with "
            "@record (torch.distributed.elastic.multiprocessing.errors) so the table carries its traceback")
