"""The consent flow: start (state, PKCE, URL), finish (the callback), expire (abandoned)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

import anyio
import structlog
from anyio.abc import TaskStatus

from haasd.authclient import AuthClient
from haasd.clock import Activity, Clock
from haasd.config import HaasConfig
from haasd.consent._advice import UNNAMED_WARNING
from haasd.consent._announce import (
    announce_abandoned,
    announce_denied,
    announce_failed,
    announce_granted,
    announce_started,
)
from haasd.consent._exchange import CodeExchange
from haasd.consent._oauth import (
    Callback,
    authorization_url,
    check_callback,
    check_human_id,
    code_challenge,
    consent_id,
    loopback_port,
    new_state,
    new_verifier,
    parse_callback,
    redirect_matches,
    resolve_scopes,
    state_id,
    with_port,
)
from haasd.consent._revoke import revoke_answer
from haasd.consent._values import ConsentResult, GrantKeeper, MayHold, PendingConsent
from haasd.errors import (
    ConsentDeniedError,
    ConsentForbiddenError,
    ConsentLimitError,
    ConsentRequestError,
    HaasdError,
    InvalidStateError,
    StoreError,
)
from haasd.events import EventBus
from haasd.grants import new_grant
from haasd.grantstore import GrantStore
from haasd.secret import Secret
from haasd.store import PendingRecord
from haasd.tokens import TokenResponse

__all__ = [
    "DEFAULT_MAX_PENDING",
    "DEFAULT_PENDING_TTL",
    "ConsentFlow",
    "ConsentResult",
    "GrantKeeper",
    "MayHold",
    "PendingConsent",
]

DEFAULT_PENDING_TTL: Final = 15 * 60.0
DEFAULT_MAX_PENDING: Final = 1000
#: the longest the expiry loop sleeps without looking again (wall-clock steps)
MAX_SLEEP: Final = 600.0
#: how soon expired consents the store would not delete are tried again (seconds)
PRUNE_RETRY: Final = 30.0

_log = structlog.get_logger("haasd.consent")


class ConsentFlow:
    """Pending consents in the store, the callback's exchange, and their expiry.

    Run :meth:`run` in the daemon's task group (``await tg.start(flow.run)``) so that
    consents nobody finishes expire on time, with a ``consent.abandoned`` event.
    """

    def __init__(
        self,
        store: GrantStore,
        auth: AuthClient,
        refresher: GrantKeeper,
        clock: Clock,
        events: EventBus,
        haas: HaasConfig,
        *,
        pending_ttl: float = DEFAULT_PENDING_TTL,
        max_pending: int = DEFAULT_MAX_PENDING,
        rng: random.Random | None = None,
        activity: Activity | None = None,
    ) -> None:
        if not pending_ttl > 0:
            raise ValueError("pending_ttl must be positive")
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._store = store
        self._auth = auth
        self._refresher = refresher
        self._clock = clock
        self._events = events
        self._haas = haas
        self.pending_ttl = pending_ttl
        self.max_pending = max_pending
        self._rng = rng or random.Random()
        #: busy during store I/O, so a ManualClock's settle hook waits for it
        self._activity = activity or Activity()
        self._wakeup: anyio.Event | None = None
        self._exchanger = CodeExchange(auth, store, events, clock, self._activity, self._wake)

    @property
    def redirect_uri(self) -> str:
        """The configured redirect URI."""
        return self._haas.redirect_uri

    # --- start --------------------------------------------------------------------------

    async def start(
        self,
        scopes: Sequence[str] | None = None,
        human_id: str | None = None,
        *,
        redirect_uri: str | None = None,
    ) -> PendingConsent:
        """Begin a consent; raises ScopeError, ConsentRequestError or ConsentLimitError.

        ``scopes`` default to the named human's grant's (a re-consent), else to the
        configured ones; they may narrow the configured scopes, never widen them.
        ``redirect_uri`` may differ from the configured one only in the port, and only for
        a loopback URI (RFC 8252 §7.3: ``haasd consent listen`` passes its listener's port).
        """
        previous = None
        if human_id is not None:
            previous = self._refresher.grant(check_human_id(human_id))
        scope = resolve_scopes(
            scopes, self._haas.scopes, previous.scope if previous is not None else None
        )
        redirect = self._redirect_uri(redirect_uri)
        state, verifier = new_state(), new_verifier()
        now = self._clock.time()
        record = PendingRecord(
            state_id(state), scope, human_id, redirect, now, now + self.pending_ttl
        )
        await self._add(record, verifier, now)
        pending = PendingConsent(
            consent_id=consent_id(record.state_id),
            state=state,
            authorization_url=authorization_url(
                self._haas.authorize_url,
                client_id=self._haas.client_id,
                redirect_uri=redirect,
                scope=scope,
                state=state,
                challenge=code_challenge(verifier),
                login_hint=human_id,
            ),
            scope=scope,
            human_id=human_id,
            reconsent=previous is not None,
            redirect_uri=redirect,
            created_at=now,
            expires_at=record.expires_at,
            warning=UNNAMED_WARNING
            if human_id is None and self._exchanger.names_humans is False
            else None,
        )
        announce_started(self._events, pending, now)
        return pending

    def _redirect_uri(self, override: str | None) -> str:
        configured = self._haas.redirect_uri
        if override is None or override == configured:
            return configured
        loopback_port(configured)  # only a loopback redirect may change its port
        try:
            port = urlsplit(override).port
        except ValueError:
            port = None
        if port is None or with_port(configured, port) != override:
            raise ConsentRequestError(
                f"redirect_uri {override} differs from the configured {configured} in more "
                "than its port"
            )
        return override

    async def _add(self, record: PendingRecord, verifier: Secret, now: float) -> None:
        store, limit = self._store, self.max_pending
        with self._activity.busy():
            if not await store.add_pending(record, verifier, limit=limit):
                # full: make room by expiring what has expired, then try once more
                await self.prune(now)
                if not await store.add_pending(record, verifier, limit=limit):
                    first = await store.next_pending_expiry()
                    raise ConsentLimitError(limit, max(0.0, (first or now) - now))
        self._wake()

    # --- finish -------------------------------------------------------------------------

    async def finish_url(
        self, callback_url: str, *, may_hold: MayHold | None = None
    ) -> ConsentResult:
        """Finish from the full URL the browser was redirected to.

        A URL that is not a redirect to the consent's ``redirect_uri`` raises
        ConsentRequestError and consumes nothing. Otherwise as :meth:`finish`.
        """
        callback = parse_callback(callback_url)
        record = await self._peek(callback.state)
        if record is not None and not redirect_matches(callback_url, record.redirect_uri):
            raise ConsentRequestError(
                f"the callback URL is not a redirect to this consent's redirect URI "
                f"{record.redirect_uri}"
            )
        return await self._finish(callback, record, may_hold)

    async def finish(
        self,
        state: str,
        *,
        code: str | None = None,
        error: str | None = None,
        error_description: str | None = None,
        may_hold: MayHold | None = None,
    ) -> ConsentResult:
        """Finish the consent ``state`` with the callback's ``code`` or ``error``.

        ``may_hold`` says which humans whoever finishes may hold (``None``: anyone). A
        consent naming another human is refused unused; one approved by another human is
        refused after the exchange, before anything is stored (ConsentForbiddenError).

        The pending consent is taken from the store in one statement before anything
        else, so of two concurrent callbacks one exchanges and the other gets
        InvalidStateError. Raises ConsentRequestError (a malformed field: nothing
        consumed), InvalidStateError (nothing exchanged), ConsentForbiddenError,
        ConsentDeniedError, ExchangeFailedError (used up), ExchangeUnavailableError (put
        back: finish again), or a StoreError.
        """
        callback = check_callback(state, code, error, error_description)
        return await self._finish(callback, await self._peek(state), may_hold)

    async def _peek(self, state: str) -> PendingRecord | None:
        with self._activity.busy():
            return await self._store.get_pending(state_id(state))

    async def _finish(
        self, callback: Callback, seen: PendingRecord | None, may_hold: MayHold | None
    ) -> ConsentResult:
        if seen is not None and may_hold is not None:
            self._check_named(seen, may_hold)
        if callback.error is not None:
            record, _ = await self._take(callback.state)
            announce_denied(self._events, record, callback.error, self._clock.time())
            raise ConsentDeniedError(callback.error, callback.error_description)
        code = callback.code
        if code is None:  # check_callback lets no such callback through
            raise ConsentRequestError("a callback carries either a code or an error")
        record, verifier = await self._take(callback.state)
        answer = await self._exchanger.exchange(record, verifier, code)
        if may_hold is not None and not may_hold(answer.human_id):
            await self._exchanger.refuse(record, answer)
        return await self._granted(record, answer)

    @staticmethod
    def _check_named(record: PendingRecord, may_hold: MayHold) -> None:
        """A consent that names a human outside the finisher's rules is not theirs to use
        (not even to deny): ConsentForbiddenError, the consent left pending."""
        if record.human_id is None or may_hold(record.human_id):
            return
        _log.warning(
            "consent refused unused: it names a human outside the finisher's rules",
            human_id=record.human_id,
            consent_id=consent_id(record.state_id),
        )
        raise ConsentForbiddenError(
            "the consent is for a human outside your rules; it was left unused for an admin "
            "of that human",
            exchanged=False,
        )

    async def _take(self, state: str) -> tuple[PendingRecord, Secret]:
        """The pending consent of ``state``, taken out of the store; InvalidStateError if
        there is none, or it has expired (then announced as abandoned)."""
        with self._activity.busy():
            taken = await self._store.take_pending(state_id(state))
        if taken is None:
            raise InvalidStateError("unknown")
        now = self._clock.time()
        if now >= taken[0].expires_at:
            self._abandoned(taken[0], now)
            raise InvalidStateError("expired")
        return taken

    def _failed(
        self,
        record: PendingRecord,
        error: str,
        human_id: str | None,
        revoked: bool | None = None,
    ) -> None:
        announce_failed(self._events, record, error, human_id, revoked, self._clock.time())

    async def _granted(self, record: PendingRecord, answer: TokenResponse) -> ConsentResult:
        now = self._clock.time()
        human_id = answer.human_id
        different = record.human_id is not None and human_id != record.human_id
        replaced = self._refresher.grant(human_id) is not None
        policy = self._refresher.policy  # the one in force now, after any reload
        grant = new_grant(answer, self._haas.environment, now, policy, self._rng)
        try:
            await self._refresher.add(grant)  # one INSERT OR REPLACE: the old grant goes at once
        except HaasdError as exc:  # the disk said no: the code is spent; revoke the tokens
            gone = await revoke_answer(self._auth, answer)
            self._failed(record, "store_error", human_id, gone.revoked)
            _log.error(
                "cannot store the new grant",
                human_id=human_id,
                error=str(exc),
                revocation=gone.note,
            )
            raise StoreError(
                f"the new grant could not be stored ({exc}); {gone.note}; start a new consent"
            ) from exc
        result = ConsentResult(
            consent_id=consent_id(record.state_id),
            human_id=human_id,
            scope=grant.scope,
            requested_scope=record.scope,
            replaced=replaced,
            different_human=different,
            expected_human_id=record.human_id,
            grant=grant,
        )
        announce_granted(self._events, result, now)
        return result

    # --- expiry -------------------------------------------------------------------------

    async def prune(self, now: float | None = None) -> int:
        """Delete expired pending consents, announcing each as abandoned; how many."""
        now = self._clock.time() if now is None else now
        with self._activity.busy():
            expired = await self._store.take_expired_pending(now)
        for record in expired:
            self._abandoned(record, now)
        return len(expired)

    def _abandoned(self, record: PendingRecord, now: float) -> None:
        announce_abandoned(self._events, record, now)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Expire pending consents on time (sleeping on the clock between), until cancelled.

        Consents that expired while haasd was down are pruned before ``started``.
        """
        self._wakeup = anyio.Event()
        await self.prune()
        task_status.started()
        while True:
            self._wakeup = anyio.Event()
            with self._activity.busy():
                first = await self._store.next_pending_expiry()
                now = self._clock.time()
                if first is not None and first <= now:
                    try:
                        await self.prune(now)
                        continue
                    except StoreError as exc:  # a full disk: try again later, serve on
                        _log.warning("cannot remove expired consents yet", error=str(exc))
                        first = now + PRUNE_RETRY
            if first is None:
                await self._wakeup.wait()  # nothing can expire before something is added
            else:
                await self._sleep_or_wakeup(min(MAX_SLEEP, first - now), self._wakeup)

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def _sleep_or_wakeup(self, delay: float, wakeup: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:

            async def sleeper() -> None:
                await self._clock.sleep(delay)
                tg.cancel_scope.cancel()

            tg.start_soon(sleeper)
            await wakeup.wait()
            tg.cancel_scope.cancel()
