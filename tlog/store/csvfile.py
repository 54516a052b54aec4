"""An append-only CSV whose header always matches its rows.

A column first seen mid-run extends the header by rewriting the file once
(streamed to a temporary file and renamed into place); rows are otherwise only
appended, never rewritten per row.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tlog.store import safefile

MAX_COLUMNS = 512


class CsvTable:
    def __init__(self, path: Path, columns: Iterable[str] = ()) -> None:
        self.path = path
        self.columns: list[str] = list(columns)
        self._template: dict[str, Any] = dict.fromkeys(self.columns)
        self._file = safefile.open_record(path)  # owned by this object
        self._writer = csv.writer(self._file)
        self.dropped: set[str] = set()
        if self._file.tell() == 0 and self.columns:
            self._writer.writerow(self.columns)

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one row; keys not yet in the header extend it (up to MAX_COLUMNS)."""
        merged = self._template.copy()
        merged.update(row)
        if len(merged) != len(self._template):
            merged = self._widen(row)
        self._writer.writerow(merged.values())

    def _widen(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The slow path of a row with unseen keys: extend the header, drop what does not fit."""
        new = [k for k in row if k not in self._template and k not in self.dropped]
        room = MAX_COLUMNS - len(self.columns)
        self.dropped.update(new[max(room, 0):])
        new = new[:max(room, 0)]
        if new:
            had_rows = self._file.tell() > 0
            self.columns.extend(new)
            self._template = dict.fromkeys(self.columns)
            if had_rows:
                try:
                    self._rewrite(len(new))
                except OSError:  # the disk is full: the header stays as it is, and so does this row
                    del self.columns[-len(new):]
                    self._template = dict.fromkeys(self.columns)
                    raise
            else:
                self._writer.writerow(self.columns)
        merged = self._template.copy()
        merged.update((k, v) for k, v in row.items() if k in self._template)
        return merged

    def _rewrite(self, added: int) -> None:
        """Copy the file with the wider header and padded rows, then swap it in."""
        self._file.sync()
        with open(self.path, newline="", encoding="utf-8") as src, \
                safefile.replacing(self.path, "w", newline="", encoding="utf-8") as dst:
            reader, writer = csv.reader(src), csv.writer(dst)
            next(reader, None)
            writer.writerow(self.columns)
            pad = [""] * added
            for old in reader:
                writer.writerow(old + pad)
        self._file.close()
        self._file = safefile.open_record(self.path)
        self._writer = csv.writer(self._file)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
