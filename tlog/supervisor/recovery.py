"""Did a restart recover?  The previous attempt's error record, amended once the next attempt shows it.

Its lifetime spans attempts: a watch is set when an attempt fails and a restart follows (tlog's or
torchrun's), fed the next attempt's events on the reader threads, and resolved by the first step past the
failing one, or by that attempt's end, whichever comes first.  ``restart.RecoveryWatch`` says what counts.
"""

from __future__ import annotations

from tlog.diagnosis import failure
from tlog.supervisor.journal import Journal
from tlog.supervisor.restart import RecoveryWatch


class Recovery:
    """The one open watch (at most one: a new failure replaces it)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal  # its clock is the run's
        self._watch: RecoveryWatch | None = None

    def watch(self, error: dict) -> None:
        """An attempt failed with ``error`` and the next one is starting: follow it."""
        self._watch = RecoveryWatch(error, self.journal.clock())

    def check(self, events: list[dict]) -> None:
        """The running attempt's events: resolved as recovered at the first step past the failing one."""
        watch = self._watch
        if watch is not None and (t := watch.passed(events)) is not None:
            self.resolve(True, t)

    def resolve(self, successful: bool, t: float | None = None) -> None:
        """Amend the failed attempt's error record (recovered or not, and when); nothing if none is watched."""
        watch, self._watch = self._watch, None
        if watch is None:
            return
        update = failure.recovery_update(watch.error, successful=successful,
                                         recovered_t=self.journal.clock() if t is None else t, failed_t=watch.failed_t)
        self.journal.emit("error", update)
        if successful:
            past = f"past step {watch.step}" if watch.step is not None else "through"
            self.journal.say(f"attempt {self.journal.attempt} got {past}: recovered from the attempt "
                             f"{watch.error['attempt']} failure in {update['recovery_time']:g} s")
