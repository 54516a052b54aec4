"""Secrets never reach the store: values of arguments and settings named like credentials become ``***``.

A command line such as ``train.py --api-key K --hf_token=T`` or ``env WANDB_API_KEY=K python train.py`` is
kept with its values masked; a config key named like one (``api_key``, ``password``, ``auth.token``) keeps
its name and loses its value.  The names are matched by their words, so ``tokenizer`` or ``max_tokens``
are not secrets.  ``tlog run --keep-secrets`` stores everything as given.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
KINDS = frozenset({"meta", "config", "attempt"})  # the events that carry command lines and configuration
ARGV_KEYS = frozenset({"argv", "command", "target"})
_SECRET = re.compile(r"(?:^|[^a-z0-9])(?:token|password|passwd|secret|credentials?|auth|"
                     r"(?:api|access|private|secret|client)[-_]?key)(?:$|[^a-z0-9])")


def secret_name(name: str) -> bool:
    """``--api-key``, ``HF_TOKEN``, ``db.password``: yes; ``tokenizer``, ``max_tokens``, ``key_frames``: no."""
    return bool(_SECRET.search(name.lower().lstrip("-")))


def argv(args: list[Any]) -> list[Any]:
    """The command line with the value of every secret-named option (``--k v``, ``--k=v``, ``K=v``) masked."""
    out: list[Any] = []
    hide_next = False
    for arg in args:
        if not isinstance(arg, str):
            out.append(arg)
            hide_next = False
            continue
        if hide_next and not arg.startswith("-"):
            out.append(MASK)
            hide_next = False
            continue
        hide_next = False
        name, eq, _ = arg.partition("=")
        if eq and secret_name(name):
            out.append(f"{name}={MASK}")
        elif arg.startswith("-") and secret_name(arg):
            out.append(arg)
            hide_next = True
        else:
            out.append(arg)
    return out


def config(data: Any) -> Any:
    """A config tree with secret-named keys' values masked and command lines (argv, command, target) redacted."""
    if isinstance(data, dict):
        return {k: MASK if isinstance(k, str) and secret_name(k) and not isinstance(v, dict)
                else argv(v) if k in ARGV_KEYS and isinstance(v, list) else config(v) for k, v in data.items()}
    if isinstance(data, list):
        return [config(v) for v in data]
    return data


def event(e: dict) -> dict:
    """The event as the store may keep it (only KINDS carry anything to hide; others are returned as they are)."""
    if e.get("kind") not in KINDS or not isinstance(e.get("data"), dict):
        return e
    return {**e, "data": config(e["data"])}
