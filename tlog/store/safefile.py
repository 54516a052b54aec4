"""Writing in a store that others can write into too (a shared log dir): never through a link tlog did not make.

A planted symlink at an output's path (``plots/training_progress.png`` pointing at a colleague's file) must
not make tlog overwrite its target.  Whole files are written to a fresh temporary file (``mkstemp``: a new
name, created exclusively, so it cannot be a link) beside the output and renamed over it, which replaces a
link rather than following it; files tlog appends to are opened with ``O_NOFOLLOW``.  An output directory
that is itself a link is refused.  A failed write leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from tlog import protocol

_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


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
