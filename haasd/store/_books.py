"""What both store backends keep in memory beside their rows: served times and quarantine.

:class:`ServedTimes` is the one record of when each human was last served — noted with no
I/O for every token served, written in one statement per flush (what is not written is
tried again next time). :class:`Quarantine` holds the humans whose rows did not open when
last read, and why, warning once per new reason. The SQLite :class:`~haasd.store.Store`
and :class:`~haasd.pgstore.PgStore` keep the same promises through them
(:mod:`haasd.grantstore`); only the statements differ.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Container, Iterable
from typing import Final

import anyio
import structlog

from haasd.errors import NeedsReconsentError, StoreError
from haasd.store._grants import unreadable_error

__all__ = ["Quarantine", "ServedTimes", "flush_then_close"]

_log: Final = structlog.get_logger("haasd.store")

#: write (human id, time) pairs in one statement
WriteServed = Callable[[list[tuple[str, float]]], Awaitable[object]]


class ServedTimes:
    """When each human was last served, as this process knows it, and which of those
    times are not written yet."""

    __slots__ = ("_unflushed", "times")

    def __init__(self) -> None:
        #: human id -> latest time served (what reads merge into the grants they return)
        self.times: dict[str, float] = {}
        self._unflushed: set[str] = set()

    def note(self, human_id: str, at: float) -> None:
        """``human_id`` was served at ``at`` (an older time never wins); no I/O."""
        if at > self.times.get(human_id, -math.inf):
            self.times[human_id] = at
            self._unflushed.add(human_id)

    def get(self, human_id: str) -> float | None:
        return self.times.get(human_id)

    def forget(self, human_id: str) -> None:
        self.times.pop(human_id, None)
        self._unflushed.discard(human_id)

    async def flush(self, write: WriteServed, *, skip: Container[str]) -> int:
        """Write the times noted since the last flush (not those of ``skip``: quarantined
        rows are left as they are) with ``write``; how many. Kept for the next flush if
        the write fails."""
        if not self._unflushed:
            return 0
        unflushed, self._unflushed = self._unflushed, set()
        pairs = [(h, self.times[h]) for h in unflushed if h not in skip and h in self.times]
        try:
            if pairs:
                await write(pairs)
        except BaseException:
            self._unflushed |= unflushed
            raise
        return len(pairs)


class Quarantine:
    """The humans whose rows were unreadable when last read, and why (a reason names a
    column and a cause, never a value)."""

    __slots__ = ("_where", "reasons")

    def __init__(self, where: str) -> None:
        self._where = where
        #: human id -> why its row is unreadable, see haasd.store._grants.why_unreadable
        self.reasons: dict[str, str] = {}

    def __contains__(self, human_id: object) -> bool:
        return human_id in self.reasons

    @property
    def humans(self) -> frozenset[str]:
        return frozenset(self.reasons)

    def refuse(self, human_id: str) -> None:
        """:class:`NeedsReconsentError` if ``human_id``'s row is quarantined."""
        reason = self.reasons.get(human_id)
        if reason is not None:
            raise NeedsReconsentError(human_id, unreadable_error(reason))

    def release(self, human_id: str) -> None:
        """A consent replaced the row, or it was deleted: no longer quarantined."""
        self.reasons.pop(human_id, None)

    def read_one(self, human_id: str, unreadable: dict[str, str], *, warn: bool) -> None:
        """``human_id``'s row was just read: quarantined if it is in ``unreadable``."""
        self.read_some((human_id,), unreadable, warn=warn)

    def read_some(
        self, human_ids: Iterable[str], unreadable: dict[str, str], *, warn: bool
    ) -> None:
        """These rows were just read: of them, exactly those in ``unreadable`` are
        quarantined (the others' quarantine, if any, stands)."""
        known = dict(self.reasons)
        for human_id in human_ids:
            self.reasons.pop(human_id, None)
        self.add(unreadable, warn=warn, known=known)

    def read_all(self, unreadable: dict[str, str], *, warn: bool) -> None:
        """Every row was just read: exactly those of ``unreadable`` are quarantined."""
        before, self.reasons = self.reasons, {}
        self.add(unreadable, warn=warn, known=before)

    def add(
        self, unreadable: dict[str, str], *, warn: bool, known: dict[str, str] | None = None
    ) -> None:
        """Record unreadable rows; warn of each whose reason is not ``known`` (default:
        recorded already)."""
        known = self.reasons if known is None else known
        for human_id, reason in unreadable.items():
            if warn and known.get(human_id) != reason:
                _log.warning(
                    "store row unreadable: quarantined until the human re-consents",
                    human_id=human_id,
                    reason=reason,
                    store=self._where,
                )
        self.reasons.update(unreadable)


async def flush_then_close(
    flush: Callable[[], Awaitable[object]], close: Callable[[], Awaitable[object]]
) -> None:
    """A store's close: the served times not written yet, then the storage itself (even
    if the flush failed), shielded from cancellation. A store that cannot take the
    served times (a full disk) does not fail the shutdown: they only make humans look
    less dormant, and are warned about."""
    with anyio.CancelScope(shield=True):
        try:
            await flush()
        except StoreError as exc:
            _log.warning("cannot write the served times at close", error=str(exc))
        finally:
            await close()
