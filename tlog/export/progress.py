"""A progress bar for long exports: rich's, on stderr when it is a terminal, else nothing."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(enabled: bool, label: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``; a no-op off a terminal, so logs and tests see no bar."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
