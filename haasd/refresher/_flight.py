"""One refresh of one grant, and the single flight around it.

An intent (the spent refresh token's fingerprint) is written before the request; a lost
answer is retried promptly with the same token; the outcome is written — shielded — only
while the intent is still the grant's, and only then is it in memory, scheduled, counted
and announced.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Final

import anyio
import structlog

from haasd.clock import rfc3339
from haasd.crypto import fingerprint
from haasd.errors import (
    ClientAuthError,
    HaasdError,
    NeedsReconsentError,
    RequestRejectedError,
    StoreError,
    TokenUnavailableError,
    TransientAuthError,
    UnknownHumanError,
)
from haasd.events import Event
from haasd.grants import (
    Answer,
    Grant,
    RefreshIntent,
    State,
    after_failure,
    after_refresh,
    failure_retry_at,
)
from haasd.refresher._core import _Core, _Flight
from haasd.secret import Secret
from haasd.tokens import TokenResponse

_log = structlog.get_logger("haasd.refresher")

#: prompt retries, with the same refresh token, of a request whose answer was lost
LOST_ANSWER_RETRIES: Final = 2
LOST_ANSWER_DELAY: Final = 1.0


class _Flights(_Core):
    """Refreshes: at most one in flight per grant, run in the engine's own task group."""

    def _fly(self, human_id: str, *, force: bool = False) -> _Flight:
        """The refresh in flight for ``human_id``, starting one if there is none."""
        flight = self._flights.get(human_id)
        if flight is None:
            flight = _Flight()
            self._flights[human_id] = flight
            assert self._tg is not None, "the refresher is not running"  # noqa: S101
            self._tg.start_soon(self._run_flight, human_id, flight, force)
        return flight

    async def _run_flight(self, human_id: str, flight: _Flight, force: bool) -> None:
        try:
            flight.error = await self._refresh(human_id, force=force)
        except UnknownHumanError as exc:
            flight.error = exc  # deleted while the refresh began
        except StoreError as exc:
            # the disk said no: nothing is served that is not on disk; try again later
            flight.error = exc
            self.stats.store_error = str(exc)
            _log.error(
                "cannot write the store; refresh postponed", human_id=human_id, error=str(exc)
            )
            self._postpone(human_id)
        except Exception as exc:  # a defect: it costs this grant a retry, never the engine
            flight.error = self._fault(human_id, "refresh", exc)
            self._interrupted.add(human_id)  # the answer may have come and been lost
            self._postpone(human_id)
        else:
            self.stats.store_error = None
        finally:
            del self._flights[human_id]
            flight.done.set()

    def _postpone(self, human_id: str) -> None:
        """Try this grant again later, as after a few failures in a row."""
        grant = self._grants.get(human_id)
        if grant is not None:
            now = self.clock.time()
            retry = failure_retry_at(now, 3, grant.access_expires_at, None, self.policy, self._rng)
            self._grants[human_id] = replace(grant, next_refresh_at=retry)
            self._place(self._grants[human_id], now)

    def _fault(self, human_id: str, doing: str, exc: Exception) -> HaasdError:
        """Record an unexpected error met while ``doing`` something for one grant."""
        what = f"{type(exc).__name__} during {doing}"
        self._faults[human_id] = what
        _log.error(
            "unexpected error handling a grant; it is retried later, the others go on",
            human_id=human_id,
            error=what,
            exc_info=exc,
        )
        return TokenUnavailableError(human_id, f"haasd met an internal error ({what})", 30.0)

    async def _refresh(self, human_id: str, *, force: bool) -> HaasdError | None:
        grant = await self._apply_clock(human_id, self.clock.time())
        if grant is None:
            return UnknownHumanError(human_id)
        if grant.state is State.NEEDS_RECONSENT:
            return NeedsReconsentError(human_id, grant.last_error)
        if self.stats.client_fault is not None and not force:
            return ClientAuthError("client_fault", self.stats.client_fault)
        interrupted = human_id in self._interrupted
        intent = RefreshIntent(
            uuid.uuid4().hex, fingerprint(grant.refresh_token), self.clock.time()
        )
        with anyio.CancelScope(shield=True), self._activity.busy():
            await self.store.begin_refresh(human_id, intent)
        grant = replace(grant, intent=intent)
        self._grants[human_id] = grant
        lost = 0
        while True:
            started = time.perf_counter()  # real time: latency is a measurement
            try:
                answer = await self.auth.refresh(
                    grant.refresh_token, human_id=human_id, scope=grant.scope
                )
            except TransientAuthError as exc:
                self.stats.observe_latency(time.perf_counter() - started)
                if exc.sent and exc.issued_refresh_token is None and lost < LOST_ANSWER_RETRIES:
                    lost += 1  # the server may have rotated: retry with the same token, promptly
                    interrupted = True
                    await self.clock.sleep(LOST_ANSWER_DELAY)
                    continue
                return await self._failed(grant, exc, interrupted=interrupted)
            except HaasdError as exc:
                self.stats.observe_latency(time.perf_counter() - started)
                return await self._failed(grant, exc, interrupted=interrupted)
            self.stats.observe_latency(time.perf_counter() - started)
            self._hook("answered", human_id)
            await self._succeeded(grant, answer)
            self._hook("written", human_id)
            return None

    def _revoke_later(self, human_id: str, token: Secret, why: str) -> None:
        """Revoke a refresh token haasd will not keep, at the server, in the background."""
        if not token or not self.auth.can_revoke or self._tg is None:
            return
        self._tg.start_soon(self._revoke, human_id, token, why)

    async def _revoke(self, human_id: str, token: Secret, why: str) -> None:
        with anyio.CancelScope(shield=True), self._activity.busy():
            revoked = await self.auth.revoke(token, hint="refresh_token")
        _log.info(
            "refresh token revoked at the server" if revoked else "refresh token not revoked",
            human_id=human_id,
            why=why,
        )

    def _hook(self, point: str, human_id: str) -> None:
        if self._checkpoint is not None:
            self._checkpoint(point, human_id)

    async def _write_outcome(self, grant: Grant, new: Grant) -> bool:
        """Write a refresh's outcome — if the grant is still the one refreshed — then
        show it. A re-consent or delete that landed meanwhile wins: the answer is dropped."""
        attempt = grant.intent.attempt_id if grant.intent is not None else None
        with anyio.CancelScope(shield=True), self._activity.busy():
            written = await self.store.finish_refresh(new, attempt_id=attempt)
        if not written:
            _log.info(
                "refresh outcome dropped: the grant was replaced or deleted meanwhile",
                human_id=grant.human_id,
            )
            if new.refresh_token != grant.refresh_token and grant.human_id not in self._grants:
                # rotated, for a grant deleted meanwhile. (Not for one replaced by a
                # re-consent: a server may revoke every token of the client and human
                # alike, the new consent's too.)
                self._revoke_later(grant.human_id, new.refresh_token, "its grant was deleted")
            return False
        self._grants[grant.human_id] = new
        return True

    async def _succeeded(self, grant: Grant, answer: TokenResponse) -> None:
        now = self.clock.time()
        if now >= grant.access_expires_at and grant.state is not State.NEEDS_RECONSENT:
            self.stats.late += 1
        new = after_refresh(grant, answer, now, self.policy, self._rng)
        if not await self._write_outcome(grant, new):
            return
        for problem in answer.warnings:  # after the write: the rotation is kept first
            _log.warning(
                "refresh answer: a field was refused", human_id=new.human_id, problem=problem
            )
        self._lifetime = float(answer.expires_in)
        self._faults.pop(grant.human_id, None)
        self._interrupted.discard(grant.human_id)
        if self.stats.client_fault is not None:
            _log.info("refreshing resumed: the server accepted our client credentials")
            self.stats.client_fault = None
            for g in list(self._grants.values()):
                self._place(g, now)
        self.stats.refreshes["ok"] += 1
        self._place(new, now)
        self.events.publish(
            Event(
                "token.refreshed",
                new.human_id,
                now,
                {
                    "expires_at": rfc3339(new.access_expires_at),
                    "rotated": answer.refresh_token is not None,
                },
            )
        )
        if new.state is not grant.state:
            self._announce_state(new, "the refresh token's limit is near")

    async def _failed(self, grant: Grant, exc: HaasdError, *, interrupted: bool) -> HaasdError:
        now = self.clock.time()
        answer, new, maybe_lost = after_failure(
            grant, exc, now, self.policy, self._rng, interrupted=interrupted
        )
        human_id = grant.human_id
        self.stats.refreshes[answer.value] += 1
        if answer is Answer.CLIENT_FAULT and self.stats.client_fault is None:
            self.stats.client_fault = f"the server rejects haasd's client ({exc})"
            _log.error(
                "refreshing stopped for all grants: the token endpoint rejects our client",
                error=str(exc),
                hint="check haas.client_id and the client secret; reload or restart haasd",
            )
        retry_after = exc.retry_after if isinstance(exc, TransientAuthError) else None
        if retry_after is not None and retry_after > self.policy.retry_after_cap:
            _log.warning("capping an absurd Retry-After", retry_after=retry_after)
        if maybe_lost:
            self._interrupted.add(human_id)
        if not await self._write_outcome(grant, new):
            return exc
        if answer is Answer.REFUSED:
            self._interrupted.discard(human_id)
            self._schedule.drop(human_id)
            _log.warning("grant refused by the server", human_id=human_id, reason=new.last_error)
            self.events.publish(
                Event("grant.needs_reconsent", human_id, now, {"reason": new.last_error})
            )
        elif answer is Answer.CLIENT_FAULT:
            self._place(new, now)
        else:
            _log.info(
                "refresh failed; will retry",
                human_id=human_id,
                error=new.last_error,
                failures=new.consecutive_failures,
                retry_in=round((new.next_refresh_at or now) - now, 1),
            )
            self.events.publish(
                Event(
                    "refresh.failed",
                    human_id,
                    now,
                    {
                        "reason": new.last_error,
                        "failures": new.consecutive_failures,
                        "retry_at": rfc3339(new.next_refresh_at or now),
                    },
                )
            )
            self._place(new, now)
        if isinstance(exc, RequestRejectedError):
            _log.error("the token endpoint rejected haasd's request", error=str(exc))
        return exc
