"""The script's argparse arguments, into training_config.json's ``args`` section.

``ArgumentParser.parse_known_args`` is the one method every parse goes
through (``parse_args``, intermixed parsing, sub-parsers); only the outermost
call of a parse is recorded.  Several parsers in one script merge.
"""

from __future__ import annotations

import argparse
import functools
import os
from typing import Any

from tlog.hook.emitter import Emitter


def jsonable(value: Any) -> Any:
    """A value JSON can hold as it is: containers element-wise, paths and other objects as text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    tolist = getattr(value, "tolist", None)  # a tensor or numpy value (an lr held as a tensor)
    if callable(tolist):
        try:
            return jsonable(tolist())
        except Exception:  # noqa: BLE001 - not what it looked like: its text will do
            return str(value)
    name = getattr(value, "name", None)  # argparse.FileType: the file's name says more than its repr
    return name if isinstance(name, str) else str(value)


def install(em: Emitter) -> None:
    original = argparse.ArgumentParser.parse_known_args
    captured: dict[str, Any] = {}
    depth = [0]

    @functools.wraps(original)
    def parse_known_args(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        depth[0] += 1
        try:
            result = original(self, *args, **kwargs)
        finally:
            depth[0] -= 1
        if depth[0] == 0:
            try:
                captured.update({k: jsonable(v) for k, v in vars(result[0]).items()})
                em.emit("config", {"args": dict(captured)})
            except Exception as exc:  # noqa: BLE001 - an odd namespace: the parse itself stands
                em.warn_once("probe-args", f"tlog probe 'args' could not record arguments: {exc!r}", "probe")
        return result

    argparse.ArgumentParser.parse_known_args = parse_known_args
