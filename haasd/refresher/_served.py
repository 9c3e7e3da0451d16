"""When tokens were served: noted on the hot path, written every few seconds, and — while
the grants are still loading — which humans were served from their stored row alone,
to be placed again once every grant is in memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import anyio
import structlog

from haasd.clock import Activity
from haasd.errors import StoreError
from haasd.grants import Grant
from haasd.grantstore import GrantStore

__all__ = ["SERVED_FLUSH_EVERY", "Served"]

_log = structlog.get_logger("haasd.refresher")

#: how often the times tokens were served are written (real seconds): a crash loses
#: at most this much of them
SERVED_FLUSH_EVERY: Final = 5.0


class Served:
    """The engine's notes of tokens served, kept by the store (:meth:`GrantStore.mark_served`).

    ``place`` places a grant's deadline again: a grant that was dormant (``idle``) wakes
    up when it is served.
    """

    __slots__ = ("_activity", "_early", "_idle", "_place", "_store", "loading")

    def __init__(
        self,
        store: GrantStore,
        activity: Activity,
        *,
        idle: Callable[[Grant, float], bool],
        place: Callable[[Grant, float], None],
    ) -> None:
        self._store = store
        self._activity = activity
        self._idle = idle
        self._place = place
        #: True until every grant is in memory and placed
        self.loading = True
        self._early: set[str] = set()

    def note(self, grant: Grant, now: float) -> None:
        """``grant``'s token was served at ``now``: a dict write, and a reschedule only
        when that wakes a dormant grant (or, while loading, once every grant is placed)."""
        if self.loading:
            self._early.add(grant.human_id)
            self._store.mark_served(grant.human_id, now)
            return
        was_idle = self._idle(grant, now)
        self._store.mark_served(grant.human_id, now)
        if was_idle:
            self._place(grant, now)

    def loaded(self, grant_of: Callable[[str], Grant | None], now: float) -> None:
        """Every grant is placed: those served meanwhile are placed again, awake."""
        self.loading = False
        for human_id in self._early:
            if (grant := grant_of(human_id)) is not None:
                self._place(grant, now)
        self._early.clear()

    async def flush_loop(self) -> None:
        """Write the times tokens were served every few seconds (and the store writes
        the rest at close), so a crash makes no grant look dormant that was not."""
        while True:
            await anyio.sleep(SERVED_FLUSH_EVERY)
            try:
                with anyio.CancelScope(shield=True), self._activity.busy():
                    await self._store.flush_served()
            except StoreError as exc:  # kept in memory; the next flush tries again
                _log.warning("cannot write the served times yet", error=str(exc))
