"""Answers the store could not take: held in memory, served, and written once it can.

When HaaS has answered a refresh, its refresh token is spent: with rotation, the new
tokens in the answer are the grant's only future. If the one store of a single haasd then
refuses the write — a full disk, a file system remounted read-only — dropping the answer
would lose the grant as surely as a crash. So the answer is *held*: the new grant goes
into memory (served, scheduled), the write is tried again in the background until the
store takes it, and health stays ``degraded`` naming the store, the reason and the
humans held. The grant's next refresh waits until its answer is on disk (it could not
write its own intent anyway). Only a restart meanwhile loses a held answer — the store
still has the spent token and the intent, so the loss is reported as an interrupted
rotation — and a shutdown tries the write once more and says so if it failed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import anyio
import structlog

from haasd.errors import StoreError
from haasd.grants import Grant
from haasd.refresher._flight import Background
from haasd.refresher._stats import RefresherStats

__all__ = ["RETRY_CAP", "RETRY_FIRST", "Unwritten"]

_log = structlog.get_logger("haasd.refresher")

#: the first retry of a held answer's write, and the longest wait between two (real seconds)
RETRY_FIRST: Final = 0.25
RETRY_CAP: Final = 2.0
#: humans named in the health reason at most
NAMED: Final = 3

#: write a refresh's outcome (``grant`` as refreshed, ``new`` after it); False if the
#: grant was replaced or deleted meanwhile (the outcome is then dropped, as it should be)
Write = Callable[[Grant, Grant], Awaitable[bool]]


class Unwritten:
    """The refresh answers held in memory until the store takes them."""

    __slots__ = ("_background", "_errors", "_stats", "_write")

    def __init__(self, background: Background, write: Write, stats: RefresherStats) -> None:
        self._background = background
        self._write = write
        self._stats = stats
        #: human id → the store's last refusal of its held answer
        self._errors: dict[str, str] = {}

    def __contains__(self, human_id: object) -> bool:
        return human_id in self._errors

    def __len__(self) -> int:
        return len(self._errors)

    def hold(self, grant: Grant, new: Grant, error: StoreError) -> None:
        """The store refused ``new`` (``grant`` refreshed): write it again until it lands.
        The caller has put ``new`` in memory."""
        human_id = grant.human_id
        self._errors[human_id] = str(error)
        _log.error(
            "cannot write a refresh's answer: its tokens are held in memory and served, "
            "and written as soon as the store takes them; a restart before then loses them",
            human_id=human_id,
            error=str(error),
        )
        self._stats.store_error = self.problem()
        self._background.start_soon(self._retry, grant, new)

    def problem(self) -> str | None:
        """For health: the store's refusal and the humans held, or None."""
        if not self._errors:
            return None
        held = sorted(self._errors)
        names = ", ".join(held[:NAMED]) + (", …" if len(held) > NAMED else "")
        return (
            f"{self._errors[held[0]]}; the refreshed tokens of {len(held)} grant(s) are "
            f"held in memory only ({names}) until the store takes them: do not restart haasd"
        )

    async def _retry(self, grant: Grant, new: Grant) -> None:
        human_id, delay, landed = grant.human_id, RETRY_FIRST, False
        try:
            while not landed:
                await anyio.sleep(delay)
                delay = min(2 * delay, RETRY_CAP)
                landed = await self._try(grant, new)
        finally:
            if not landed:  # shut down meanwhile: one last try, and say what was lost
                with anyio.CancelScope(shield=True):
                    landed = await self._try(grant, new)
                if not landed:
                    _log.error(
                        "the refreshed tokens held in memory were never written: the store "
                        "still has the spent refresh token; the grant needs a re-consent "
                        "if the server detects its reuse",
                        human_id=human_id,
                        error=self._errors.get(human_id),
                    )
            self._errors.pop(human_id, None)
            self._stats.store_error = self.problem()

    async def _try(self, grant: Grant, new: Grant) -> bool:
        """One write; True once it is settled (written, or dropped as replaced)."""
        try:
            written = await self._write(grant, new)
        except StoreError as exc:
            self._errors[grant.human_id] = str(exc)
            self._stats.store_error = self.problem()
            return False
        except Exception as exc:  # noqa: BLE001 - a defect must not end the retries silently
            self._errors[grant.human_id] = f"{type(exc).__name__}: {exc}"
            _log.error("unexpected error writing a held answer", human_id=grant.human_id,
                       exc_info=exc)  # fmt: skip
            return False
        _log.info(
            "a held refresh answer is on disk at last" if written
            else "a held refresh answer was dropped: the grant was replaced or deleted",
            human_id=grant.human_id,
        )  # fmt: skip
        return True
