"""Checkpoints: every ``torch.save`` to a path, or to a file object that has a name.

A framework's checkpoint is a directory of several files (HF's ``checkpoint-N/``: safetensors, optimizer,
scheduler, RNG state, trainer_state.json); its adapter wraps the whole save in ``Saves.around`` with the
directory as target, so it is one checkpoint (the directory, what the framework resumes from) and the
``torch.save`` calls inside it are not checkpoints of their own.

The checkpoint event is sent after the save returns, so the newest one
announced is complete (what a restart resumes from).  Entering the save is a
``checkpoint_saving`` phase event (progress for hang detection; a crash
inside names it), and the pending metrics are reported first, so the
checkpoint's step has its row.  Leaving it is a phase event too (back to the
phase before, ``training`` if there was none): a kill after a finished save
is not the checkpoint's.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch

from tlog.hook.probes.state import Probe, Undo


def target_of(f: Any) -> tuple[str, int | None] | None:
    """(absolute path, bytes written) of a save target (a directory: its files together); None for an
    in-memory buffer."""
    if isinstance(f, (str, os.PathLike)):
        path = os.fspath(f)
        try:
            return os.path.abspath(path), _tree_bytes(path) if os.path.isdir(path) else os.path.getsize(path)
        except OSError:
            return os.path.abspath(path), None
    name = getattr(f, "name", None)
    if not isinstance(name, str):
        return None
    try:
        size = f.tell()  # still buffered in the user's open file: its position is what was written
    except (OSError, AttributeError, ValueError):
        size = None
    return os.path.abspath(name), size


def _tree_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


class Saves:
    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.depth = 0  # a save inside a save (a library wrapping torch.save) is one checkpoint

    def before(self) -> None:
        probe = self.probe
        probe.report_pending()
        em = probe.em
        em.phase = "checkpoint_saving"
        em.emit("phase", {"phase": "checkpoint_saving"}, step=em.step, epoch=em.epoch, batch=em.batch)

    def after(self, f: Any, phase: str | None) -> None:
        target = target_of(f)
        em = self.probe.em
        em.phase = phase
        em.emit("phase", {"phase": phase or "training"}, step=em.step, epoch=em.epoch, batch=em.batch)
        if target is not None:
            data = {"path": target[0], "bytes": target[1]}
            total = self.probe.total_batches
            if total and em.batch is not None:  # a restart from it counts epochs on from here (Probe.epoch0)
                data["epoch_complete"] = em.batch + 1 >= total
            em.emit("checkpoint", data, step=em.step, epoch=em.epoch,
                    batch=em.batch)
        self.probe.idle()

    def around(self, save: Callable[[], Any], target: Any) -> Any:
        """Run ``save`` as one checkpoint written to ``target`` (a path, a named file, or a directory)."""
        if self.depth or "save" in self.probe.off:
            return save()
        probe = self.probe
        phase = probe.em.phase
        try:
            self.before()
        except Exception as exc:  # noqa: BLE001
            probe.fail("save", exc)
        self.depth += 1
        try:
            result = save()  # a failing save leaves the phase at checkpoint_saving
        finally:
            self.depth -= 1
        try:
            self.after(target, phase)
        except Exception as exc:  # noqa: BLE001
            probe.fail("save", exc)
        return result


def patch(probe: Probe) -> Undo:
    saves = probe.saves = Saves(probe)
    original = torch.save

    @functools.wraps(original)
    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
        return saves.around(lambda: original(obj, f, *args, **kwargs), f)

    torch.save = save
    torch.serialization.save = save

    def undo() -> None:
        torch.save = original
        torch.serialization.save = original

    return undo
