"""Writing in a store that others can write into too (a shared log dir): never through a link tlog did not make.

A planted symlink at an output's path (``plots/training_progress.png`` pointing at a colleague's file) must
not make tlog overwrite its target.  Whole files are written to a fresh temporary file (``mkstemp``: a new
name, created exclusively, so it cannot be a link) beside the output and renamed over it, which replaces a
link rather than following it; files tlog appends to are opened with ``O_NOFOLLOW``.  An output directory
that is itself a link is refused.  A failed write leaves no temporary file behind.

Recording never harms the training: a full, failing or read-only disk (ENOSPC, EDQUOT, EFBIG, EIO,
EROFS) under the experiment's record files is handled here, and only here.  ``open_record`` files keep
what cannot be written in memory (up to ``MAX_PENDING`` bytes each, whole writes, the newest dropped past
that) and ``write_record`` keeps the latest version of a document; both retry at most once a second.
``FAULTS`` says once (one line, through its ``report``) which path failed, and once when writing works
again, and keeps each gap (when, where, bytes lost) for the writer to record.  Caches use
``open_append``/``replace_bytes``, which raise: their callers rebuild them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from tlog import protocol

_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


def linked(path: Path, top: Path) -> bool:
    """Whether ``path``, or a directory between ``top`` (the user's own choice) and it, is a symbolic link."""
    while path not in (top, path.parent):
        if path.is_symlink():
            return True
        path = path.parent
    return False


def _real_dir(path: Path) -> None:
    if path.parent.is_symlink():
        raise OSError(errno.ELOOP, "the directory is a symbolic link; not writing through it", str(path.parent))


@contextlib.contextmanager
def replacing(path: Path, mode: str = "wb", **kw: Any) -> Iterator[IO]:
    """A file object whose content replaces ``path`` when the block ends without an error."""
    _real_dir(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kw) as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def replace_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically (a reader never sees half a document), never through a link."""
    with replacing(path) as f:
        f.write(data)


def open_append(path: Path, mode: str = "ab", **kw: Any) -> IO:
    """Open ``path`` for appending, created if absent; a symbolic link there is an error (ELOOP)."""
    _real_dir(path)
    return os.fdopen(os.open(path, _APPEND, 0o644), mode, **kw)


def write_json(path: Path, obj: Any) -> None:
    """Replace ``path`` atomically, so a reader never sees half a document (never through a planted link)."""
    replace_bytes(path, protocol.dumps(obj))


STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})
MAX_PENDING = 8 << 20
RETRY_S = 1.0


def is_storage_error(exc: BaseException) -> bool:
    """The disk, not tlog: full, over quota or a file size limit, failing, read-only."""
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS


class Faults:
    """The store's state of health: one failure (an outage) at a time, reported once, its gap kept."""

    def __init__(self) -> None:
        self.report: Callable[[str], object] = lambda text: sys.stderr.write(f"tlog: {text}\n")
        self.failing: str | None = None
        self.since = 0.0
        self.lost = 0
        self.gaps: list[dict[str, Any]] = []
        self._documents: dict[Path, bytes] = {}
        self._next_try = 0.0
        self._lock = threading.RLock()

    def absorb(self, path: Path | str, exc: OSError) -> None:
        """A write to ``path`` failed: a storage error starts (or continues) an outage; anything else raises."""
        if not is_storage_error(exc):
            raise exc
        with self._lock:
            self._next_try = time.monotonic() + RETRY_S
            if self.failing is None:
                self.failing, self.since, self.lost = str(path), time.time(), 0
                self.report(f"cannot write {path}: {exc.strerror or exc}; the run goes on, its record is kept "
                            f"in memory (up to {MAX_PENDING >> 20} MiB a file) and written when it can be")

    def may_try(self) -> bool:
        return self.failing is None or time.monotonic() >= self._next_try

    def wrote(self, path: Path | str) -> None:
        """A write that had to wait succeeded: the disk takes writes again.  The outage is over once the
        documents kept meanwhile are written too (whichever file failed first: the outage is the disk's)."""
        with self._lock:
            if self.failing is None:
                return
            self._retry_documents()
            if self._documents:
                return
            failed = self.failing
            now = time.time()
            gap = {"path": failed, "from": self.since, "to": now, "lost_bytes": self.lost}
            self.gaps.append(gap)
            self.failing = None
            lost = f"; {self.lost} bytes could not be kept" if self.lost else ""
            self.report(f"writing {failed} again after {now - self.since:.1f} s{lost}")

    def take_gaps(self) -> list[dict[str, Any]]:
        with self._lock:
            gaps, self.gaps = self.gaps, []
            return gaps

    def document(self, path: Path, data: bytes) -> None:
        """Replace a whole document, or keep its latest version until it can be."""
        with self._lock:
            if not self.may_try():
                self._documents[path] = data
                return
            waited = self.failing is not None
        try:
            replace_bytes(path, data)
        except OSError as exc:
            self.absorb(path, exc)
            with self._lock:
                self._documents[path] = data
            return
        with self._lock:
            self._documents.pop(path, None)
        if waited:
            self.wrote(path)

    def _retry_documents(self) -> None:
        for path, data in list(self._documents.items()):
            try:
                replace_bytes(path, data)
            except OSError as exc:
                self.absorb(path, exc)
                return
            del self._documents[path]


FAULTS = Faults()


def write_record(path: Path, data: bytes) -> None:
    """A document of the record (summary, errors, config...): never raises for the disk's sake."""
    FAULTS.document(path, data)


class RecordFile:
    """An append-only file of the record that a failing disk never makes raise: unwritten bytes wait here."""

    def __init__(self, path: Path) -> None:
        _real_dir(path)
        self.path = path
        self._fd = os.open(path, _APPEND, 0o644)
        self._size = os.fstat(self._fd).st_size
        self._buf = bytearray()

    def write(self, data: str | bytes) -> int:
        if isinstance(data, str):
            data = data.encode("utf-8")
        if len(self._buf) + len(data) > MAX_PENDING and FAULTS.failing is not None:
            FAULTS.lost += len(data)
        else:
            self._buf += data
        return len(data)

    def writelines(self, lines: Iterable[str | bytes]) -> None:
        for line in lines:
            self.write(line)

    def tell(self) -> int:
        return self._size + len(self._buf)

    def flush(self, *, force: bool = False) -> bool:
        """Write what waits; True when nothing is left waiting."""
        if not self._buf:
            return True
        if not force and not FAULTS.may_try():
            return False
        waited = FAULTS.failing is not None
        try:
            while self._buf:
                n = os.write(self._fd, self._buf)
                del self._buf[:n]
                self._size += n
        except OSError as exc:
            FAULTS.absorb(self.path, exc)
            return False
        if waited:
            FAULTS.wrote(self.path)
        return True

    def sync(self) -> None:
        """Flush, raising when that cannot be done now (before the file is read back or replaced)."""
        if not self.flush(force=True):
            raise OSError(errno.ENOSPC, "the record cannot be written now", str(self.path))

    def close(self) -> None:
        if self._fd < 0:
            return
        if not self.flush(force=True):
            FAULTS.lost += len(self._buf)
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> RecordFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_record(path: Path) -> RecordFile:
    """Open a file of the record for appending (never through a link; see ``RecordFile``); text is written
    as UTF-8."""
    return RecordFile(path)
