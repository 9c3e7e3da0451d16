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
from dataclasses import dataclass, replace
from typing import Final

import anyio
import structlog

from haasd.authclient import AuthClient
from haasd.clock import Activity, Clock
from haasd.coordination import Coordination, Permit
from haasd.crypto import fingerprint
from haasd.errors import (
    ClientAuthError,
    FencedError,
    HaasdError,
    LeaseEndedError,
    NeedsReconsentError,
    StoreError,
    TokenUnavailableError,
    TransientAuthError,
    UnknownHumanError,
)
from haasd.grants import Grant, RefreshIntent, State, failure_retry_at
from haasd.refresher._memory import Memory
from haasd.refresher._outcome import Outcomes
from haasd.refresher._reload import Reloads, newer
from haasd.tokens import TokenResponse

_log = structlog.get_logger("haasd.refresher")

#: prompt retries, with the same refresh token, of a request whose answer was lost
LOST_ANSWER_RETRIES: Final = 2
LOST_ANSWER_DELAY: Final = 1.0
#: how soon a shared store's failed write of an answer is tried again (real seconds)
WRITE_RETRY_DELAY: Final = 0.2

#: a test's hook: called with ("answered" | "written", human id) during a refresh
Checkpoint = Callable[[str, str], None]
#: (re)place a grant's deadline, judged at a time
Place = Callable[[Grant, float], None]


@dataclass(slots=True)
class Sending:
    """``may_send`` of a refresh's request: asked right before it goes, once the rate
    budget let it — is the grant's permit still surely held? — and noting when (``at``):
    the token in the answer was issued no earlier, so its life counts from then."""

    clock: Clock
    coordination: Coordination
    permit: Permit
    at: float

    def __call__(self) -> bool:
        self.at = self.clock.time()
        return self.coordination.held(self.permit)


class Refreshing:
    """Spends a grant's refresh token and records what came of it; never raises."""

    def __init__(
        self,
        memory: Memory,
        *,
        auth: AuthClient,
        clock: Clock,
        coordination: Coordination,
        reloads: Reloads,
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
        self._reloads = reloads
        self._outcomes = outcomes
        self._place = place
        self._rng = rng
        self._activity = activity
        self._checkpoint = checkpoint

    async def refresh(
        self, human_id: str, *, force: bool = False, judged: Grant | None = None
    ) -> HaasdError | None:
        """Refresh ``human_id``'s grant (``force``: even while haasd's client is rejected);
        what it met, or None. ``judged``: the grant as it was when the refresh was decided
        (in a cluster, a newer one in the store means another instance did it). Errors of
        the disk or of haasd itself postpone the grant."""
        memory = self._memory
        try:
            error = await self._refresh_permitted(human_id, force=force, judged=judged)
        except UnknownHumanError as exc:
            return exc  # deleted while the refresh began
        except FencedError as exc:
            # another instance changed the grant, or the lease ended, before anything
            # was spent: read it again (which places it) and let the caller look again
            _log.info("refresh not begun: the grant changed elsewhere", human_id=human_id)
            await self._reread_quietly(human_id)
            return TokenUnavailableError(human_id, str(exc), 1.0)
        except StoreError as exc:
            # the disk said no: nothing was spent; try again later. (Answers held in
            # memory meanwhile stay the reason shown: they are what a restart would lose.)
            memory.stats.store_error = self._outcomes.unwritten.problem() or str(exc)
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
        memory.stats.store_error = self._outcomes.unwritten.problem()
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

    async def _refresh_permitted(
        self, human_id: str, *, force: bool, judged: Grant | None
    ) -> HaasdError | None:
        coordination = self._coordination
        permit = await coordination.acquire(human_id)
        if permit is None:
            return await self._await_holder(human_id)
        try:
            if coordination.shared and await self._done_elsewhere(human_id, judged):
                return None  # whoever asked looks at the new grant again
            error = await self._refresh(human_id, force=force, permit=permit)
        finally:
            with anyio.CancelScope(shield=True):
                await self._coordination.release(permit)
        return error

    async def _done_elsewhere(self, human_id: str, judged: Grant | None) -> bool:
        """Read the grant again now that this instance holds its lease: True if another
        instance refreshed (or replaced) it since it was ``judged`` here. A left-over
        intent is a dead holder's lost answer: recovered as after a restart."""
        grant = await self._reloads.reread(human_id)
        if grant is None or judged is None:
            return False
        if grant.intent is not None:
            self._memory.interrupted.add(human_id)
        return newer(grant, judged)

    async def _await_holder(self, human_id: str) -> HaasdError | None:
        """Another instance holds the lease: wait for its result instead of asking HaaS
        a second time; None once the grant was read again."""
        wait = self._coordination.wait
        if await self._reloads.wait(human_id, wait):
            return None
        grant = self._memory.grants.get(human_id)
        if grant is not None:  # try again soon: the lease ends by itself
            self._place(grant, self._clock.time() + 1.0)
        return TokenUnavailableError(
            human_id, f"another instance holds its lease and did not refresh it in {wait:g}s", 1.0
        )

    async def _reread_quietly(self, human_id: str) -> None:
        try:
            await self._reloads.reread(human_id)
        except StoreError as exc:
            _log.warning("cannot re-read a grant", human_id=human_id, error=str(exc))
            self._postpone(human_id)

    async def _refresh(self, human_id: str, *, force: bool, permit: Permit) -> HaasdError | None:
        memory = self._memory
        grant = await self._outcomes.apply_clock(human_id, self._clock.time())
        refusal = self._refusal(human_id, grant, force=force)
        if refusal is not None or grant is None:
            return refusal
        interrupted = human_id in memory.interrupted
        grant = await self._begin(grant)
        lost = 0
        sending = Sending(self._clock, self._coordination, permit, self._clock.time())
        while True:
            started = time.perf_counter()  # real time: latency is a measurement
            try:
                answer = await self._auth.refresh(
                    grant.refresh_token, human_id=human_id, scope=grant.scope, may_send=sending
                )
            except LeaseEndedError:
                return self._lease_ended(grant)
            except TransientAuthError as exc:
                memory.stats.observe_latency(time.perf_counter() - started)
                if exc.sent and exc.issued_refresh_token is None and lost < LOST_ANSWER_RETRIES:
                    lost += 1  # the server may have rotated: retry with the same token, promptly
                    interrupted = True
                    _log.warning(
                        "refresh answer lost; asking again with the same refresh token",
                        human_id=human_id, error=str(exc), attempt=lost + 1,
                    )  # fmt: skip
                    await self._clock.sleep(LOST_ANSWER_DELAY)
                    continue
                return await self._outcomes.failed(grant, exc, interrupted=interrupted)
            except HaasdError as exc:
                memory.stats.observe_latency(time.perf_counter() - started)
                return await self._outcomes.failed(grant, exc, interrupted=interrupted)
            memory.stats.observe_latency(time.perf_counter() - started)
            self._hook("answered", human_id)
            if await self._keep(grant, answer, sending.at):
                await self._coordination.publish(human_id)
            self._hook("written", human_id)
            return None

    def _refusal(self, human_id: str, grant: Grant | None, *, force: bool) -> HaasdError | None:
        """Why ``grant`` is not to be refreshed now, or None."""
        if grant is None:
            return UnknownHumanError(human_id)
        if grant.state is State.NEEDS_RECONSENT:
            return NeedsReconsentError(human_id, grant.last_error)
        if self._memory.stats.client_fault is not None and not force:
            return ClientAuthError("client_fault", self._memory.stats.client_fault)
        if human_id in self._outcomes.unwritten:
            # its last answer is not on disk yet: spending the new token now would leave
            # the store two rotations behind. The tokens in hand are served meanwhile.
            self._postpone(human_id)
            return TokenUnavailableError(
                human_id, "its last refresh is not written to the store yet", 5.0
            )
        return None

    async def _keep(self, grant: Grant, answer: TokenResponse, sent_at: float) -> bool:
        """Write a successful answer (:meth:`Outcomes.succeeded`), its token's life
        counted from ``sent_at``, when the request went: the server issued it no earlier,
        and a pause between its answer and this process reading it (SIGSTOP, a suspended
        host) must not make haasd believe the token lives longer than the server said.

        On the one store of a single haasd, a write the store refuses (a full disk) is
        held: the tokens are served from memory and written when the store takes them
        (:mod:`haasd.refresher._unwritten`). On a shared store, a write the database
        failed — a restart or an outage broke the connection — is tried again until the
        database takes it: the rotated token exists only in memory, and whoever
        refreshes next could only spend the old one again. (It gave up after two leases:
        one try may wait the pool's whole timeout, so an outage of seconds lost the
        rotation.) The write stays fenced on this refresh's intent, so trying late can
        never overwrite the result of another instance that took the lease meanwhile."""
        if not self._coordination.shared:  # the one store: a refused write is held
            return await self._outcomes.succeeded(grant, answer, answered_at=sent_at, hold=True)
        long: float | None = anyio.current_time() + 2 * self._coordination.wait
        while True:
            try:
                return await self._outcomes.succeeded(grant, answer, answered_at=sent_at)
            except StoreError as exc:
                late = long is not None and anyio.current_time() >= long
                (_log.error if late else _log.warning)(
                    "cannot write a refresh's answer yet; trying again until the database"
                    " is back (a restart of this instance before then loses it)",
                    human_id=grant.human_id,
                    error=str(exc),
                )
                long = None if late else long
            try:
                await anyio.sleep(WRITE_RETRY_DELAY)
            except anyio.get_cancelled_exc_class():
                _log.error(
                    "stopped before a refresh's answer could be written: the store still"
                    " has the spent refresh token",
                    human_id=grant.human_id,
                )
                raise

    def _lease_ended(self, grant: Grant) -> HaasdError:
        """The lease may end before an answer could be written: nothing was sent. Look
        again shortly (another instance may have it by then)."""
        self._place(grant, self._clock.time() + 1.0)
        return TokenUnavailableError(grant.human_id, "this instance's lease ran out", 1.0)

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
