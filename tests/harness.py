"""A running haasd engine against the simulator, on the manual clock, for tests.

Real parts throughout: the simulator over loopback HTTP, httpx, a SQLite file. Only the
clock is manual, and it settles (waits for HTTP and disk work in flight) before each
jump, so a simulated month runs in seconds with the same sequence of events.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from haasd.authclient import AuthClient
from haasd.clock import Activity, ManualClock
from haasd.crypto import Key, Sealer
from haasd.events import EventBus, Subscription
from haasd.grants import Grant, Policy, new_grant
from haasd.ratelimit import RateBudget
from haasd.refresher import Checkpoint, Refresher
from haasd.secret import Secret
from haasd.simulator import Simulator
from haasd.store import Store
from haasd.tokens import parse_token_response

CLIENT_ID = "app_test_client"
CLIENT_SECRET = "test-client-secret-value"
HOUR = 3600.0
DAY = 86400.0


@dataclass
class Harness:
    clock: ManualClock
    sim: Simulator
    refresher: Refresher
    store: Store
    events: EventBus
    feed: Subscription
    policy: Policy
    budget: RateBudget

    async def consent(self, human_id: str, scope: str = "tasks:dispatch status:read") -> Grant:
        """A human consents through the simulator; the grant goes into haasd."""
        answer = parse_token_response(await self.sim.consent(human_id, scope))
        grant = new_grant(answer, "test", self.clock.time(), self.policy, random.Random(0))
        await self.refresher.add(grant)
        return grant

    def drain(self) -> list[tuple[str, str | None]]:
        """Events published so far, as (type, human_id)."""
        out: list[tuple[str, str | None]] = []
        while (event := self.feed.get_nowait()) is not None:
            out.append((event.type, event.human_id))
        return out


def simulator(clock: ManualClock, **options: Any) -> Simulator:
    return Simulator(clock, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **options)


@asynccontextmanager
async def running(
    tmp_path: Path,
    *,
    policy: Policy | None = None,
    sim_options: dict[str, Any] | None = None,
    sim: Simulator | None = None,
    client_secret: str = CLIENT_SECRET,
    requests_per_minute: int = 300,
    checkpoint: Checkpoint | None = None,
    key: Key | None = None,
    invariant: Callable[[Harness], None] | None = None,
) -> AsyncIterator[Harness]:
    """Run an engine; with ``sim`` (running, on a ManualClock) reuse that server."""
    policy = policy or Policy()
    async with AsyncExitStack() as stack:
        if sim is None:
            sim = simulator(ManualClock(), **(sim_options or {}))
            await stack.enter_async_context(sim.running())
        clock = sim.clock
        assert isinstance(clock, ManualClock)
        activity = Activity()
        clock.add_settle_hook(activity.wait_idle)
        clock.add_settle_hook(sim.activity.wait_idle)
        budget = RateBudget(requests_per_minute, clock)
        auth = AuthClient(
            token_url=sim.token_url,
            client_id=CLIENT_ID,
            client_secret=Secret(client_secret),
            budget=budget,
            activity=activity,
        )
        stack.push_async_callback(auth.aclose)
        store = await Store.open(tmp_path / "haasd.db", Sealer(key or Key.generate()))
        stack.push_async_callback(store.close)
        events = EventBus()
        refresher = Refresher(
            store=store,
            auth=auth,
            clock=clock,
            policy=policy,
            events=events,
            budget=budget,
            rng=random.Random(42),
            activity=activity,
            checkpoint=checkpoint,
        )
        feed = stack.enter_context(events.subscribe(maxsize=1_000_000))
        harness = Harness(clock, sim, refresher, store, events, feed, policy, budget)
        if invariant is not None:

            async def check() -> None:
                invariant(harness)

            clock.add_settle_hook(check)
        async with anyio.create_task_group() as tg:
            await tg.start(refresher.run)
            yield harness
            tg.cancel_scope.cancel()
