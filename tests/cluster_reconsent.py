"""Lost grants consented again during a fault campaign, the way an operator would.

With strict reuse detection a kill inside the unavoidable window costs the grant: the
human must consent again. Without that, a long campaign would run out of grants to
refresh after its first few losses, and its later faults would test nothing. So for each
human the simulator holds no live grant for, or an instance says needs re-consent
(:class:`Loss`), the campaign

1. waits until an instance *reports* it — ``GET /v1/humans/HUMAN`` says
   ``needs_reconsent`` (a loss haasd never reports is a silent loss: the campaign fails);
2. then the human consents again through the consent API of a running instance
   (``POST /v1/consents``, the simulator's page, ``POST /v1/consents/callback`` — on
   any running instance, as a consent may finish on another), retried from the start
   when a fault cuts it off;
3. and the campaign goes on with the new grant.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import httpx
from cluster_nodes import Node

from haasd.simulator import Simulator

#: how often the simulator and an instance are asked which humans are lost
POLL = 0.5
#: seconds after a human consented again in which an instance's report of the old grant
#: needing re-consent is not a new loss
QUIET = 5.0


@dataclass
class Loss:
    human_id: str
    #: when the simulator was found to hold no live grant for the human
    found_at: float
    #: seconds from then until an instance reported the human needs re-consent
    reported_after: float | None = None
    #: seconds from then until the human's new grant was stored
    reconsented_after: float | None = None
    #: consents started and cut off by a fault before they finished
    retries: int = 0


class Reconsenter:
    """Finds lost grants and has their humans consent again (see the module)."""

    def __init__(
        self,
        sim: Simulator,
        humans: list[str],
        running: Callable[[], list[Node]],
        rng: random.Random,
        *,
        report_within: float,
    ) -> None:
        self.sim = sim
        self.humans = humans
        self.running = running
        self.rng = rng
        self.report_within = report_within
        self.losses: list[Loss] = []
        self._open: set[str] = set()
        self._going: Callable[[], bool] = lambda: True
        #: human -> until when a report of needing re-consent is taken as stale
        self._quiet: dict[str, float] = {}

    @property
    def unreported(self) -> list[Loss]:
        return [loss for loss in self.losses if loss.reported_after is None]

    @property
    def pending(self) -> list[str]:
        """Humans lost and not yet consented again."""
        return sorted(self._open)

    async def watch(self, keep_going: Callable[[], bool]) -> None:
        """Until ``keep_going()`` is false: find new losses, recover each in its own task
        (they end with it)."""
        self._going = keep_going
        async with anyio.create_task_group() as tg:
            while keep_going():
                refused = await self._refused_here()
                for human_id in self.humans:
                    if human_id in self._open or time.monotonic() < self._quiet.get(human_id, 0):
                        continue
                    if human_id in refused or not self.sim.has_active_grant(human_id):
                        loss = Loss(human_id, time.time())
                        self.losses.append(loss)
                        self._open.add(human_id)
                        tg.start_soon(self._recover, loss)
                await anyio.sleep(POLL)

    async def _refused_here(self) -> set[str]:
        """The humans a running instance says need re-consent. The simulator's view alone
        misses a loss when an earlier consent was cut off after the simulator issued its
        tokens: that orphan family keeps the human alive there, unused by anyone."""
        node = self._any()
        if node is None:
            return set()
        try:
            reply = await node.get("/v1/humans", limit=3.0)
        except (httpx.HTTPError, OSError):
            return set()
        if reply.status_code != 200:
            return set()
        return {h["human_id"] for h in reply.json()["humans"] if h["state"] == "needs_reconsent"}

    async def _recover(self, loss: Loss) -> None:
        """Wait for an instance to report the loss (one not reported within
        ``report_within`` is a silent loss, which the result names), then have the human
        consent again, as often as faults cut the consent off, while the campaign runs."""
        deadline = time.monotonic() + self.report_within
        while time.monotonic() < deadline and loss.reported_after is None:
            if await self._reported(loss.human_id):
                loss.reported_after = time.time() - loss.found_at
            else:
                await anyio.sleep(0.2)
        while self._going():
            if await self._consent(loss.human_id):
                loss.reconsented_after = time.time() - loss.found_at
                self._open.discard(loss.human_id)
                # an instance may report the old grant for a moment yet (NOTIFY, re-read)
                self._quiet[loss.human_id] = time.monotonic() + QUIET
                return
            loss.retries += 1
            await anyio.sleep(0.3)

    async def _reported(self, human_id: str) -> bool:
        node = self._any()
        if node is None:
            return False
        try:
            reply = await node.get(f"/v1/humans/{human_id}", limit=3.0)
        except (httpx.HTTPError, OSError):
            return False
        return reply.status_code == 200 and reply.json().get("state") == "needs_reconsent"

    async def _consent(self, human_id: str) -> bool:
        """One whole consent; False if a fault cut it off (nothing to undo: an
        abandoned consent expires, and one the simulator answered but no instance
        stored leaves an orphan family at the simulator that nothing ever uses)."""
        starting, finishing = self._any(), self._any()
        if starting is None or finishing is None:
            return False
        try:
            started = await starting.post("/v1/consents", {"human_id": human_id}, limit=5.0)
            if started.status_code != 201:
                return False
            location = await self.sim.visit(started.json()["authorization_url"])
            if location is None:
                return False
            done = await finishing.post(
                "/v1/consents/callback", {"callback_url": location}, limit=10.0
            )
        except (httpx.HTTPError, OSError):
            return False
        return done.status_code == 201

    def _any(self) -> Node | None:
        nodes = self.running()
        return self.rng.choice(nodes) if nodes else None
