"""Loading the grants at start: what an interrupted refresh and the clock mean for them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import anyio

from haasd.grants import Grant, after_clock
from haasd.grantstore import GrantStore
from haasd.refresher._memory import Memory

__all__ = ["load_grants"]


async def load_grants(
    memory: Memory, grants: Iterable[Grant], now: float, store: GrantStore, *, shared: bool
) -> list[Grant]:
    """Put ``grants`` in memory; the ones the clock moved (written, to be announced).

    A grant with an intent lost its last answer: it is retried promptly. The clock moved
    while haasd was down: its changes are written in one transaction — or, when other
    instances share the store, as status changes only, which never carry tokens over a
    refresh another instance may be writing at this moment.
    """
    for grant in grants:
        if grant.intent is not None:
            memory.interrupted.add(grant.human_id)
            grant = replace(grant, next_refresh_at=now)
        memory.grants[grant.human_id] = grant
    changed = [c for g in memory.grants.values() if (c := after_clock(g, now, memory.policy))]
    if not changed:
        return []
    with anyio.CancelScope(shield=True):
        if not shared:
            await store.put_grants(changed)
        for grant in changed if shared else ():
            await store.update_status(
                grant.human_id,
                state=grant.state,
                last_error=grant.last_error,
                consecutive_failures=grant.consecutive_failures,
                next_refresh_at=grant.next_refresh_at,
            )
    for grant in changed:
        memory.grants[grant.human_id] = grant
    return changed
