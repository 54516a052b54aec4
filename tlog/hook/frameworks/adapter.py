"""What every framework adapter shares: its guard (one failure switches it off), the probe's side of the
hand-over (the names the framework owns, its checkpoint saves) and the scalars of a framework's log dict.

Its own module so the adapters import it at the top and the package's installers import the adapters, with
no circle; an adapter is loaded only after its framework (and so torch) is imported, as is this module.
"""

from __future__ import annotations

from collections.abc import Callable

from tlog.hook import torch_probe
from tlog.hook.emitter import Emitter


def take_over(names: frozenset[str]) -> None:
    """The framework reports ``names`` itself, and its own validation: the probe leaves both to it."""
    probe = torch_probe.current()
    if probe is None:
        return
    probe.owned |= names
    watch = probe.side_watchers.pop("validation", None)  # loss calls in eval passes: the framework's eval_* win
    if watch is not None:
        watch(False)


def checkpoint(save: Callable[[], object], target: str) -> object:
    """Run a framework's whole checkpoint save as one checkpoint of ``target`` (a directory or a file)."""
    probe = torch_probe.current()
    if probe is None or probe.saves is None:
        return save()
    return probe.saves.around(save, target)


def scalars(values: dict) -> dict:
    """The plain numbers (and short strings) of a framework's log dict; lists, dicts and objects left out."""
    return {k: v for k, v in values.items() if isinstance(k, str) and isinstance(v, (int, float, str))}


_off: set[str] = set()


def guard(em: Emitter, name: str, fn: Callable[..., object], *args: object) -> object:
    """Run a step of an adapter; its first failure is said once and switches that adapter off (the framework's
    own call has run, or runs, untouched)."""
    if name in _off:
        return None
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - an unexpected framework version
        _off.add(name)
        em.warn_once(f"probe-{name}", f"tlog {name} adapter disabled after an error: {exc!r}", "probe")
        return None
