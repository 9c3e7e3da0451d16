"""What the refresh engine and the consent flow need from storage: :class:`GrantStore`.

The SQLite :class:`~haasd.store.Store` is the first implementation; a store shared by
several haasd instances is meant to be the second. Whatever backs it, these promises hold
(the backend conformance suite checks them on every implementation):

* **A write is done when it returns**: every ``async`` write is durable (committed and
  synced) before it returns, and once begun it completes or rolls back as a whole, even
  if the caller is cancelled.
* **Intent before result**: :meth:`~GrantStore.begin_refresh` records which refresh token
  is about to be spent; :meth:`~GrantStore.finish_refresh` with that intent's
  ``attempt_id`` writes the outcome only while the row still carries the intent — a
  grant replaced (a re-consent) or deleted meanwhile wins, and the answer is dropped.
  An intent still present at start means a refresh's answer may have been lost: it is
  read back with the grant (:attr:`Grant.intent <haasd.grants.Grant.intent>`).
* **Served times are cheap**: :meth:`~GrantStore.mark_served` does no I/O;
  :meth:`~GrantStore.flush_served` writes the times noted since the last flush, and
  :meth:`~GrantStore.close` writes what is left. :meth:`~GrantStore.served_at` is the one
  record of when each human was last served, as this process knows it.
* **A pending consent is consumed once**: of two callers taking the same one
  (:meth:`~GrantStore.take_pending`), exactly one gets it.
* **Unreadable is not fatal**: a record that does not open is *quarantined* — read as a
  stand-in grant in ``needs_reconsent`` naming the reason, listed in
  :attr:`~GrantStore.unreadable`, and left as it is until a new consent replaces it.

Errors: :class:`~haasd.errors.UnknownHumanError` for a human without a grant where one
is needed, :class:`~haasd.errors.StoreError` when the storage says no.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from haasd.grantpack import Opener, Sealed
from haasd.grants import Grant, RefreshIntent, State
from haasd.secret import Secret

if TYPE_CHECKING:
    from haasd.store import PendingRecord

__all__ = ["GrantStore"]


class GrantStore(Protocol):
    """Durable grants and pending consents (see the module's promises)."""

    @property
    def unreadable(self) -> frozenset[str]:
        """The humans whose records were unreadable when last read: quarantined."""
        ...

    async def close(self) -> None:
        """Write the served times not yet written, and release the storage. Idempotent."""
        ...

    # -- grants ---------------------------------------------------------------------------

    async def get_grant(self, human_id: str, *, warn: bool = True) -> Grant:
        """The grant of ``human_id`` (its stand-in if unreadable), or UnknownHumanError.
        ``warn``: log a record newly found unreadable."""
        ...

    async def peek_grant(self, human_id: str) -> Grant | None:
        """The grant of ``human_id`` as stored now, without waiting for :meth:`read_grants`
        in progress and without noting anything (no quarantine): what the daemon serves
        from while it loads. None if there is no such grant or its record does not open."""
        ...

    async def get_grants(self, human_ids: Sequence[str], *, warn: bool = True) -> list[Grant]:
        """The grants of ``human_ids`` that exist (stand-ins for unreadable ones), read
        in one statement (or a few, for many): what a cluster's instance re-reads when
        others changed several grants at once."""
        ...

    async def list_grants(self, *, warn: bool = True) -> list[Grant]:
        """Every grant, ordered by human id (stand-ins for the unreadable ones)."""
        ...

    async def read_grants(
        self, take: Callable[[list[Grant | Sealed]], None], *, warn: bool = True
    ) -> None:
        """:meth:`list_grants` for the engine at start, handed to ``take`` a chunk at a
        time as they are read, in a worker thread, one chunk after another: no list of
        every grant is ever held. A row of the usual shape comes as its :class:`Sealed`
        (its tokens not opened yet: :attr:`opener` opens them), any other as its Grant."""
        ...

    @property
    def opener(self) -> Opener:
        """Opens the tokens of the :class:`Sealed` rows :meth:`read_grants` gave, and
        quarantines a row that does not open."""
        ...

    async def put_grant(self, grant: Grant) -> None:
        """Insert or replace the grant of ``grant.human_id`` (a consent ends a quarantine;
        a stand-in is never written)."""
        ...

    async def put_grants(self, grants: Iterable[Grant], *, what: str = "put grants") -> None:
        """Insert or replace many grants, all in one transaction."""
        ...

    async def delete_grant(self, human_id: str) -> bool:
        """Forget the grant of ``human_id``; False if there was none."""
        ...

    async def begin_refresh(self, human_id: str, intent: RefreshIntent) -> None:
        """Record that a refresh is about to spend the grant's refresh token (overwrites a
        left-over intent). A quarantined grant: NeedsReconsentError."""
        ...

    async def finish_refresh(self, grant: Grant, *, attempt_id: str | None = None) -> bool:
        """Write a refresh's outcome (tokens, expiries, scope, status) and clear the
        intent; with ``attempt_id``, only while the record still carries that intent.
        Whether it was written."""
        ...

    async def update_status(
        self,
        human_id: str,
        *,
        state: State,
        last_error: str | None,
        consecutive_failures: int,
        next_refresh_at: float | None,
        clear_intent: bool = False,
    ) -> None:
        """Change a grant's status fields (a quarantined grant is left as it is)."""
        ...

    # -- served times ---------------------------------------------------------------------

    def mark_served(self, human_id: str, at: float) -> None:
        """Note that ``human_id``'s token was served at ``at`` (an older time never wins).
        No I/O: it runs for every token served."""
        ...

    def served_at(self, human_id: str) -> float | None:
        """The latest time noted by :meth:`mark_served` since the grant was read or put,
        or None. No I/O."""
        ...

    async def flush_served(self) -> int:
        """Write the served times noted since the last flush; how many."""
        ...

    # -- pending consents (haasd.consent) -------------------------------------------------

    async def add_pending(self, record: PendingRecord, verifier: Secret, *, limit: int) -> bool:
        """Add a pending consent unless ``limit`` are pending already; whether it was."""
        ...

    async def restore_pending(self, record: PendingRecord, verifier: Secret) -> None:
        """Put back what :meth:`take_pending` took (not counted against the limit)."""
        ...

    async def get_pending(self, state_id: str) -> PendingRecord | None:
        """The pending consent of ``state_id`` (the state's digest), if any."""
        ...

    async def list_pending(self) -> list[PendingRecord]:
        """Every pending consent, the first to expire first."""
        ...

    async def next_pending_expiry(self) -> float | None:
        """When the first pending consent expires, or None."""
        ...

    async def take_pending(self, state_id: str) -> tuple[PendingRecord, Secret] | None:
        """Remove and return a pending consent and its verifier: exactly once."""
        ...

    async def take_expired_pending(self, now: float) -> list[PendingRecord]:
        """Remove and return every pending consent expired at ``now``, first to expire first."""
        ...
