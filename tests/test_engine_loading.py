"""Loading at start places every grant's deadline (in one pass, one heapify): each one
is refreshed when it is due, once, and none is lost. The engine against the simulator,
on the manual clock, over a real SQLite store."""

from __future__ import annotations

from pathlib import Path

from harness import DAY, running, simulator

from haasd.clock import ManualClock
from haasd.crypto import Key, Sealer
from haasd.grants import Policy
from haasd.store import Store

KEEP_BUSY = Policy(refresh_idle=60 * DAY)
OVERDUE = [f"usr_overdue_{i:02d}" for i in range(30)]
LATER = [f"usr_later_{i:02d}" for i in range(30)]


async def test_every_loaded_grant_is_refreshed_when_due_and_once(tmp_path: Path) -> None:
    key, sim = Key.generate(), simulator(ManualClock())
    async with sim.running():
        async with running(tmp_path, key=key, policy=KEEP_BUSY, sim=sim) as h:
            for human_id in OVERDUE + LATER:
                await h.consent(human_id)
            start = h.clock.time()
        # while haasd is down: half the grants fall overdue, half are due a minute apart
        async with await Store.open(tmp_path / "haasd.db", Sealer(key)) as store:
            due = dict.fromkeys(OVERDUE, start - 10)
            due |= {h: start + 60 * (i + 1) for i, h in enumerate(LATER)}
            for human_id, at in due.items():
                grant = await store.get_grant(human_id)
                await store.update_status(
                    human_id, state=grant.state, last_error=None,
                    consecutive_failures=0, next_refresh_at=at,
                )  # fmt: skip
        async with running(tmp_path, key=key, policy=KEEP_BUSY, sim=sim) as h:
            assert {g.human_id for g in h.refresher.grants()} == set(due)
            await h.clock.advance(31)  # the start-up spread is at most 30 s
            refreshed = dict(h.sim.stats.refreshes)
            assert {human_id: refreshed.get(human_id, 0) for human_id in due} == {
                human_id: int(human_id in OVERDUE) for human_id in due
            }
            for i, human_id in enumerate(LATER):
                await h.clock.advance(start + 60 * (i + 1) + 1 - h.clock.time())
                assert h.sim.stats.refreshes[human_id] == 1, f"{human_id} refreshed when due"
                waiting = LATER[i + 1 :]
                assert all(h.sim.stats.refreshes[w] == 0 for w in waiting), "none early"
            assert all(h.sim.stats.refreshes[human_id] == 1 for human_id in due)
