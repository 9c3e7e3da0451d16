"""What the engine does with what happened to a grant: written first, then shown.

A refresh's outcome (:meth:`Outcomes.succeeded`, :meth:`Outcomes.failed`) and the clock
passing a grant's limits (:meth:`Outcomes.apply_clock`) are decided by
:mod:`haasd.grants`; here they are written to the store — shielded, and for a refresh
only while its intent is still the grant's — and only then put in memory, scheduled,
counted and announced as events.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

import anyio
import structlog

from haasd.authclient import AuthClient
from haasd.clock import Activity, Clock
from haasd.errors import HaasdError, RequestRejectedError, StoreError, TransientAuthError
from haasd.events import Event, EventBus
from haasd.grants import Grant, Outcome, State, after_clock, after_failure, after_refresh
from haasd.grantstore import GrantStore
from haasd.refresher._flight import Background
from haasd.refresher._memory import Memory
from haasd.refresher._unwritten import Unwritten
from haasd.secret import Secret
from haasd.timefmt import rfc3339
from haasd.tokens import TokenResponse

_log = structlog.get_logger("haasd.refresher")

#: (re)place a grant's deadline, judged at a time
Place = Callable[[Grant, float], None]
#: a grant has no deadline any more
Drop = Callable[[str], None]


#: the waits before a revocation the server could not take is tried again
REVOKE_RETRIES: Final = (10.0, 60.0, 300.0)
#: the longest wait a server's Retry-After may ask of a revocation
REVOKE_WAIT_CAP: Final = 3600.0


class Outcomes:
    """Writes, keeps and announces what happened to grants."""

    def __init__(
        self,
        memory: Memory,
        *,
        store: GrantStore,
        auth: AuthClient,
        clock: Clock,
        events: EventBus,
        background: Background,
        place: Place,
        drop: Drop,
        rng: random.Random,
        activity: Activity,
        rejected: Callable[[], None] = lambda: None,
    ) -> None:
        """``rejected``: called when the server starts rejecting haasd's client."""
        self._memory = memory
        self.store = store
        self._auth = auth
        self._clock = clock
        self._events = events
        self._background = background
        self._place = place
        self._drop = drop
        self._rng = rng
        self._activity = activity
        self._rejected = rejected
        #: refresh answers the store refused, held in memory until it takes them
        self.unwritten = Unwritten(background, self._write, memory.stats)

    # --- the clock ----------------------------------------------------------------------

    async def apply_clock(self, human_id: str, now: float) -> Grant | None:
        """Move the grant's state as the clock says; persist and announce a change."""
        grant = self._memory.grants.get(human_id)
        if grant is None:
            return None
        moved = after_clock(grant, now, self._memory.policy)
        if moved is None:
            return grant
        grant = moved
        with anyio.CancelScope(shield=True), self._activity.busy():
            await self.store.update_status(
                human_id,
                state=grant.state,
                last_error=grant.last_error,
                consecutive_failures=grant.consecutive_failures,
                next_refresh_at=grant.next_refresh_at,
            )
        self._memory.grants[human_id] = grant
        self.announce_state(grant, state_reason(grant))
        return grant

    def announce_state(self, grant: Grant, reason: str) -> None:
        """Publish (and log) that ``grant`` came to re-consent due or needed."""
        now = self._clock.time()
        details: dict[str, object] = {
            "reason": reason,
            "refresh_expires_at": rfc3339(grant.refresh_expires_at),
            "days_left": max(0, int((grant.refresh_expires_at - now) // 86400)),
        }
        if grant.state is State.RECONSENT_DUE:
            self._events.publish(Event("grant.reconsent_due", grant.human_id, now, details))
            _log.info("re-consent due", human_id=grant.human_id, days_left=details["days_left"])
        elif grant.state is State.NEEDS_RECONSENT:
            self._events.publish(Event("grant.needs_reconsent", grant.human_id, now, details))
            _log.warning("re-consent needed", human_id=grant.human_id, reason=reason)

    # --- a refresh's outcome ------------------------------------------------------------

    async def succeeded(
        self,
        grant: Grant,
        answer: TokenResponse,
        *,
        answered_at: float | None = None,
        hold: bool = False,
    ) -> bool:
        """Keep the answer's tokens; False if the grant was replaced or deleted meanwhile.
        ``answered_at``: when the answer came (default: now), which its expiries count
        from — not when a write retried after a store error finally went through.
        ``hold``: if the store refuses the write, keep the tokens in memory anyway and
        write them later (:class:`~haasd.refresher._unwritten.Unwritten`), rather than
        raise the :class:`StoreError`."""
        memory = self._memory
        now = self._clock.time() if answered_at is None else answered_at
        if now >= grant.access_expires_at and grant.state is not State.NEEDS_RECONSENT:
            memory.stats.late += 1
        new = after_refresh(grant, answer, now, memory.policy, self._rng)
        try:
            if not await self._write(grant, new):
                return False
        except StoreError as exc:
            if not hold or grant.human_id not in memory.grants:
                raise
            memory.grants[grant.human_id] = new
            self.unwritten.hold(grant, new, exc)
        for problem in answer.warnings:  # after the write: the rotation is kept first
            _log.warning(
                "refresh answer: a field was refused", human_id=new.human_id, problem=problem
            )
        memory.lifetimes.append(float(answer.expires_in))
        memory.faults.pop(grant.human_id, None)
        memory.interrupted.discard(grant.human_id)
        if memory.stats.client_fault is not None:
            _log.info("refreshing resumed: the server accepted our client credentials")
            memory.stats.client_fault = None
            for g in list(memory.grants.values()):
                self._place(g, now)
        memory.stats.refreshes["ok"] += 1
        self._place(new, now)
        rotated = answer.refresh_token is not None
        details = {"expires_at": rfc3339(new.access_expires_at), "rotated": rotated}
        self._events.publish(Event("token.refreshed", new.human_id, now, details))
        if new.state is not grant.state:
            self.announce_state(new, "the refresh token's limit is near")
        return True

    async def failed(self, grant: Grant, exc: HaasdError, *, interrupted: bool) -> HaasdError:
        """Keep what a failed refresh means for the grant (and haasd); ``exc`` again."""
        memory, now = self._memory, self._clock.time()
        answer, new, maybe_lost = after_failure(
            grant, exc, now, memory.policy, self._rng, interrupted=interrupted
        )
        memory.stats.refreshes[answer.value] += 1
        if answer is Outcome.CLIENT_FAULT and memory.stats.client_fault is None:
            memory.stats.client_fault = f"the server rejects haasd's client ({exc})"
            _log.error(
                "refreshing stopped for all grants: the token endpoint rejects our client",
                error=str(exc),
                hint="check haas.client_id and the client secret, then reload haasd; one"
                " refresh is tried 15 minutes on, then ever less often, up to hourly",
            )
            self._rejected()
        retry_after = exc.retry_after if isinstance(exc, TransientAuthError) else None
        if retry_after is not None and retry_after > memory.policy.retry_after_cap:
            _log.warning("capping an absurd Retry-After", retry_after=retry_after)
        if maybe_lost:
            memory.interrupted.add(grant.human_id)
        if answer is Outcome.REFUSED:  # said before the write: a kill after it is not silent
            _log.warning(
                "grant refused by the server", human_id=new.human_id, reason=new.last_error
            )
        if not await self._write(grant, new):
            return exc
        if answer is Outcome.REFUSED:
            self._refused(new, now)
        elif answer is Outcome.CLIENT_FAULT:
            self._place(new, now)
        else:
            memory.failing.add(new.human_id)
            self._will_retry(new, now)
        if isinstance(exc, RequestRejectedError):
            _log.error("the token endpoint rejected haasd's request", error=str(exc))
        return exc

    def _refused(self, new: Grant, now: float) -> None:
        human_id = new.human_id
        self._memory.interrupted.discard(human_id)
        self._drop(human_id)
        self._events.publish(
            Event("grant.needs_reconsent", human_id, now, {"reason": new.last_error})
        )

    def _will_retry(self, new: Grant, now: float) -> None:
        retry_at = new.next_refresh_at or now
        _log.info(
            "refresh failed; will retry",
            human_id=new.human_id,
            error=new.last_error,
            failures=new.consecutive_failures,
            retry_in=round(retry_at - now, 1),
        )
        details = {
            "reason": new.last_error,
            "failures": new.consecutive_failures,
            "retry_at": rfc3339(retry_at),
        }
        self._events.publish(Event("refresh.failed", new.human_id, now, details))
        self._place(new, now)

    async def _write(self, grant: Grant, new: Grant) -> bool:
        """Write a refresh's outcome — if the grant is still the one refreshed — then
        keep it. A re-consent or delete that landed meanwhile wins: the answer is dropped."""
        attempt = grant.intent.attempt_id if grant.intent is not None else None
        with anyio.CancelScope(shield=True), self._activity.busy():
            written = await self.store.finish_refresh(new, attempt_id=attempt)
        if not written:
            _log.info(
                "refresh outcome dropped: the grant was replaced or deleted meanwhile",
                human_id=grant.human_id,
            )
            deleted = grant.human_id not in self._memory.grants
            if new.refresh_token != grant.refresh_token and deleted:
                # rotated, for a grant deleted meanwhile. (Not for one replaced by a
                # re-consent: a server may revoke every token of the client and human
                # alike, the new consent's too.)
                self.revoke_later(grant.human_id, new.refresh_token, "its grant was deleted")
            return False
        self._memory.grants[grant.human_id] = new
        return True

    # --- revoking what is not kept ------------------------------------------------------

    def revoke_later(self, human_id: str, token: Secret, why: str) -> None:
        """Revoke a refresh token haasd will not keep, at the server, in the background."""
        if not token or not self._auth.can_revoke or not self._background.running:
            return
        self._background.start_soon(self._revoke, human_id, token, why)

    async def _revoke(self, human_id: str, token: Secret, why: str) -> None:
        """Tried again when the server may get over what stopped it (RFC 7009 §2.2.1: a
        503), after :data:`REVOKE_RETRIES` or the wait it named if longer; each attempt
        shielded, the waits not (a stop ends them: best effort)."""
        for retry in (*REVOKE_RETRIES, None):
            with anyio.CancelScope(shield=True), self._activity.busy():
                revoked = await self._auth.try_revoke(token, hint="refresh_token")
            if isinstance(revoked, bool) or retry is None:
                break
            wait = max(retry, min(revoked, REVOKE_WAIT_CAP))
            _log.info("refresh token not revoked yet", human_id=human_id, again_in=wait)
            await self._clock.sleep(wait)
        if revoked is True:
            _log.info("refresh token revoked at the server", human_id=human_id, why=why)
        else:
            _log.warning("refresh token not revoked; it stays valid at the server until it"
                         " expires", human_id=human_id, why=why)  # fmt: skip


def state_reason(grant: Grant) -> str:
    """Why the clock moved ``grant`` to its state (for the event and log line)."""
    if grant.state is State.RECONSENT_DUE:
        return "the refresh token's limit is near"
    return "refresh_token_expired"
