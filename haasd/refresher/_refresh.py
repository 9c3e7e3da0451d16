"""One refresh of one grant: the permit, the intent, the request, the outcome written.

An intent (the spent refresh token's fingerprint) is written before the request; a lost
answer is retried promptly with the same token; the outcome is written — shielded — only
while the intent is still the grant's, and only then is it in memory, scheduled, counted
and announced (:mod:`haasd.refresher._outcome`). Every refresh holds a permit
(:mod:`haasd.coordination`) from before the intent until after the outcome is published.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Final

import anyio
import structlog

from haasd.authclient import AuthClient
from haasd.clock import Activity, Clock
from haasd.coordination import Coordination
from haasd.crypto import fingerprint
from haasd.errors import (
    ClientAuthError,
    HaasdError,
    NeedsReconsentError,
    StoreError,
    TokenUnavailableError,
    TransientAuthError,
    UnknownHumanError,
)
from haasd.grants import Grant, RefreshIntent, State, failure_retry_at
from haasd.refresher._memory import Memory
from haasd.refresher._outcome import Outcomes

_log = structlog.get_logger("haasd.refresher")

#: prompt retries, with the same refresh token, of a request whose answer was lost
LOST_ANSWER_RETRIES: Final = 2
LOST_ANSWER_DELAY: Final = 1.0

#: a test's hook: called with ("answered" | "written", human id) during a refresh
Checkpoint = Callable[[str, str], None]
#: (re)place a grant's deadline, judged at a time
Place = Callable[[Grant, float], None]


class Refreshing:
    """Spends a grant's refresh token and records what came of it; never raises."""

    def __init__(
        self,
        memory: Memory,
        *,
        auth: AuthClient,
        clock: Clock,
        coordination: Coordination,
        outcomes: Outcomes,
        place: Place,
        rng: random.Random,
        activity: Activity,
        checkpoint: Checkpoint | None,
    ) -> None:
        self._memory = memory
        self._auth = auth
        self._clock = clock
        self._coordination = coordination
        self._outcomes = outcomes
        self._place = place
        self._rng = rng
        self._activity = activity
        self._checkpoint = checkpoint

    async def refresh(self, human_id: str, *, force: bool = False) -> HaasdError | None:
        """Refresh ``human_id``'s grant (``force``: even while haasd's client is rejected);
        what it met, or None. Errors of the disk or of haasd itself postpone the grant."""
        memory = self._memory
        try:
            error = await self._refresh_permitted(human_id, force=force)
        except UnknownHumanError as exc:
            return exc  # deleted while the refresh began
        except StoreError as exc:
            # the disk said no: nothing is served that is not on disk; try again later
            memory.stats.store_error = str(exc)
            _log.error(
                "cannot write the store; refresh postponed", human_id=human_id, error=str(exc)
            )
            self._postpone(human_id)
            return exc
        except Exception as exc:  # noqa: BLE001 - a defect costs this grant a retry, never the engine
            error = self.fault(human_id, "refresh", exc)
            memory.interrupted.add(human_id)  # the answer may have come and been lost
            self._postpone(human_id)
            return error
        memory.stats.store_error = None
        return error

    def fault(self, human_id: str, doing: str, exc: Exception) -> HaasdError:
        """Record an unexpected error met while ``doing`` something for one grant."""
        what = f"{type(exc).__name__} during {doing}"
        self._memory.faults[human_id] = what
        _log.error(
            "unexpected error handling a grant; it is retried later, the others go on",
            human_id=human_id,
            error=what,
            exc_info=exc,
        )
        return TokenUnavailableError(human_id, f"haasd met an internal error ({what})", 30.0)

    def _postpone(self, human_id: str) -> None:
        """Try this grant again later, as after a few failures in a row."""
        memory = self._memory
        grant = memory.grants.get(human_id)
        if grant is not None:
            now = self._clock.time()
            retry = failure_retry_at(
                now, 3, grant.access_expires_at, None, memory.policy, self._rng
            )
            memory.grants[human_id] = replace(grant, next_refresh_at=retry)
            self._place(memory.grants[human_id], now)

    async def _refresh_permitted(self, human_id: str, *, force: bool) -> HaasdError | None:
        permit = await self._coordination.acquire(human_id)
        if permit is None:
            return TokenUnavailableError(human_id, "another instance is refreshing it", 1.0)
        try:
            error = await self._refresh(human_id, force=force)
        finally:
            with anyio.CancelScope(shield=True):
                await self._coordination.release(permit)
        return error

    async def _refresh(self, human_id: str, *, force: bool) -> HaasdError | None:
        memory = self._memory
        grant = await self._outcomes.apply_clock(human_id, self._clock.time())
        if grant is None:
            return UnknownHumanError(human_id)
        if grant.state is State.NEEDS_RECONSENT:
            return NeedsReconsentError(human_id, grant.last_error)
        if memory.stats.client_fault is not None and not force:
            return ClientAuthError("client_fault", memory.stats.client_fault)
        interrupted = human_id in memory.interrupted
        grant = await self._begin(grant)
        lost = 0
        while True:
            started = time.perf_counter()  # real time: latency is a measurement
            try:
                answer = await self._auth.refresh(
                    grant.refresh_token, human_id=human_id, scope=grant.scope
                )
            except TransientAuthError as exc:
                memory.stats.observe_latency(time.perf_counter() - started)
                if exc.sent and exc.issued_refresh_token is None and lost < LOST_ANSWER_RETRIES:
                    lost += 1  # the server may have rotated: retry with the same token, promptly
                    interrupted = True
                    await self._clock.sleep(LOST_ANSWER_DELAY)
                    continue
                return await self._outcomes.failed(grant, exc, interrupted=interrupted)
            except HaasdError as exc:
                memory.stats.observe_latency(time.perf_counter() - started)
                return await self._outcomes.failed(grant, exc, interrupted=interrupted)
            memory.stats.observe_latency(time.perf_counter() - started)
            self._hook("answered", human_id)
            if await self._outcomes.succeeded(grant, answer):
                await self._coordination.publish(human_id)
            self._hook("written", human_id)
            return None

    async def _begin(self, grant: Grant) -> Grant:
        """Write the intent — which refresh token is about to be spent — before spending it."""
        intent = RefreshIntent(
            uuid.uuid4().hex, fingerprint(grant.refresh_token), self._clock.time()
        )
        with anyio.CancelScope(shield=True), self._activity.busy():
            await self._outcomes.store.begin_refresh(grant.human_id, intent)
        grant = replace(grant, intent=intent)
        self._memory.grants[grant.human_id] = grant
        return grant

    def _hook(self, point: str, human_id: str) -> None:
        if self._checkpoint is not None:
            self._checkpoint(point, human_id)
