"""The consent flow: start (state, PKCE, URL), finish (the callback), expire (abandoned)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, NoReturn, Protocol
from urllib.parse import urlsplit

import anyio
import structlog
from anyio.abc import TaskStatus

from haasd.authclient import AuthClient
from haasd.clock import Activity, Clock, rfc3339
from haasd.config import HaasConfig
from haasd.consent._advice import UNNAMED_WARNING, retry_message, spent_message, unnamed_message
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
from haasd.consent._revoke import revoke_answer, revoke_token
from haasd.errors import (
    AuthError,
    ConsentDeniedError,
    ConsentForbiddenError,
    ConsentLimitError,
    ConsentRequestError,
    ExchangeFailedError,
    ExchangeUnavailableError,
    HaasdError,
    InvalidStateError,
    StoreError,
    TransientAuthError,
)
from haasd.events import Event, EventBus
from haasd.grants import Grant, Policy, new_grant
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
#: the TransientAuthError type of an answer that names no human for a consent naming none
UNNAMED_HUMAN: Final = "unnamed_human"
#: the error of an answer naming another human than the consent did

_log = structlog.get_logger("haasd.consent")

#: may whoever finishes a consent hold this human's grant? (the server asks its rules)
MayHold = Callable[[str], bool]


class GrantKeeper(Protocol):
    """What the flow needs of the refresh engine (:class:`~haasd.refresher.Refresher`)."""

    @property
    def policy(self) -> Policy:
        """The refresh policy in force now: a reload may replace it, so it is read for
        every new grant, never kept."""
        ...

    def grant(self, human_id: str) -> Grant | None:
        """The human's grant, if one is kept."""
        ...

    async def add(self, grant: Grant) -> None:
        """Store a grant (replacing the human's earlier one at once) and schedule it."""
        ...


@dataclass(frozen=True, slots=True)
class PendingConsent:
    """A started consent: send the human to ``authorization_url`` before ``expires_at``.

    ``state`` is what the callback must bring back; it is stored only as a digest and
    never logged, so it is kept out of ``repr`` (as is the URL, which carries it).
    """

    consent_id: str
    state: str = field(repr=False)
    authorization_url: str = field(repr=False)
    scope: tuple[str, ...]
    #: the human asked for (``login_hint``): a re-consent or a known human's onboarding
    human_id: str | None
    #: True when ``human_id`` has a grant now (whatever its state)
    reconsent: bool
    redirect_uri: str
    created_at: float
    expires_at: float
    #: something the starter should know before sending the human (e.g. that a consent
    #: without a human id will be refused by this server), or None
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class ConsentResult:
    """A finished consent: the grant is stored and scheduled."""

    consent_id: str
    #: whom the server says consented (the grant is stored under this id)
    human_id: str
    scope: tuple[str, ...]
    requested_scope: tuple[str, ...]
    #: an earlier grant of ``human_id`` was replaced (atomically)
    replaced: bool
    #: the consent named a human and another one approved: a new grant for that other
    #: human (if the finisher may hold them); the named human's grant is untouched
    different_human: bool
    expected_human_id: str | None
    grant: Grant = field(repr=False)


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
        #: the last code exchange without a named human: did its answer name one? (None:
        #: not known yet) — in memory only, so ``start`` can warn before a sure refusal
        self._names_humans: bool | None = None

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
            warning=UNNAMED_WARNING if human_id is None and self._names_humans is False else None,
        )
        details = {
            "consent_id": pending.consent_id,
            "scope": " ".join(scope),
            "expires_at": rfc3339(pending.expires_at),
            "reconsent": pending.reconsent,
        }
        self._events.publish(Event("consent.started", human_id, now, details))
        _log.info("consent started", human_id=human_id, **details)
        if pending.warning is not None:
            _log.warning(pending.warning, consent_id=pending.consent_id)
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
            details = {"consent_id": consent_id(record.state_id), "error": callback.error}
            now = self._clock.time()
            self._events.publish(Event("consent.denied", record.human_id, now, details))
            _log.info("consent denied", human_id=record.human_id, **details)
            raise ConsentDeniedError(callback.error, callback.error_description)
        code = callback.code
        if code is None:  # check_callback lets no such callback through
            raise ConsentRequestError("a callback carries either a code or an error")
        record, verifier = await self._take(callback.state)
        answer = await self._exchange(record, verifier, code)
        if may_hold is not None and not may_hold(answer.human_id):
            await self._refuse(record, answer)
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

    async def _exchange(self, record: PendingRecord, verifier: Secret, code: str) -> TokenResponse:
        """The token answer for ``code``; the human is the consent's when the answer names
        none (and must match it when it does), the scope the requested one when it says
        none (RFC 6749 §5.1).

        A failure before the code reached the server puts the consent back
        (ExchangeUnavailableError: finish again); one after uses it up (ExchangeFailedError)
        and revokes whatever the server issued that haasd cannot keep.
        """
        cid = consent_id(record.state_id)
        try:
            answer = await self._auth.exchange_code(
                code,
                record.redirect_uri,
                verifier.reveal(),
                human_id=record.human_id,
                scope=record.scope,
            )
        except TransientAuthError as exc:
            if exc.sent:
                await self._spent(record, exc)
            # the server did not act on the code: the consent stays usable
            await self._put_back(record, verifier)
            _log.warning("code exchange failed; consent kept", consent_id=cid, error=str(exc))
            raise ExchangeUnavailableError(
                exc.error_type,
                retry_message(str(exc), rfc3339(record.expires_at)),
                expires_at=record.expires_at,
                retry_after=exc.retry_after,
            ) from exc
        except AuthError as exc:
            self._failed(record, exc.error_type, record.human_id)
            _log.warning("code exchange refused", consent_id=cid, reason=str(exc))
            raise ExchangeFailedError(
                exc.error_type,
                f"the code exchange was refused: {exc}; start a new consent",
                status=exc.status,
            ) from exc
        except BaseException:
            # cancelled (or a defect): the server may not have seen the code; keep it
            await self._put_back(record, verifier)
            raise
        if record.human_id is None:
            self._names_humans = True  # the server named the human itself
        return answer

    async def _spent(self, record: PendingRecord, exc: TransientAuthError) -> NoReturn:
        """The code reached the server and the answer is lost or unusable: the consent is
        used up (a retry could only get invalid_grant); revoke what was issued."""
        unnamed = exc.error_type == UNNAMED_HUMAN
        if unnamed:
            self._names_humans = False
        gone = await revoke_token(self._auth, exc.issued_refresh_token, "refresh_token")
        answered = exc.status is not None and 200 <= exc.status < 300
        message = (
            unnamed_message(gone.note)
            if unnamed
            else spent_message(str(exc), answered=answered, note=gone.note)
        )
        self._failed(record, exc.error_type, record.human_id, gone.revoked)
        _log.warning(
            "code exchange failed after the code was sent; consent used up",
            consent_id=consent_id(record.state_id),
            human_id=record.human_id,
            error=str(exc),
            revocation=gone.note or "no token reached haasd",
        )
        raise ExchangeFailedError(
            exc.error_type, message, status=exc.status, exchanged=True, revoked=gone.revoked
        ) from exc

    async def _refuse(self, record: PendingRecord, answer: TokenResponse) -> NoReturn:
        """The human who approved is outside the finisher's rules: revoke what the exchange
        gave, store nothing, and say so (raises ConsentForbiddenError)."""
        gone = await revoke_answer(self._auth, answer)
        self._failed(record, "human_not_allowed", record.human_id, gone.revoked)
        _log.warning(
            "consent refused: the human who approved is outside the finishing peer's "
            "rules; nothing was stored",
            human_id=answer.human_id,
            consent_id=consent_id(record.state_id),
            expected_human_id=record.human_id,
            revocation=gone.note,
        )
        raise ConsentForbiddenError(
            f"the consent was for a human outside your rules; nothing was stored ({gone.note}; "
            "an admin of that human may run a new consent)",
            exchanged=True,
            revoked=gone.revoked,
        )

    def _failed(
        self,
        record: PendingRecord,
        error: str,
        human_id: str | None,
        revoked: bool | None = None,
    ) -> None:
        details: dict[str, object] = {"consent_id": consent_id(record.state_id), "error": error}
        if revoked is not None:
            details["revoked"] = revoked
        self._events.publish(Event("consent.failed", human_id, self._clock.time(), details))

    async def _put_back(self, record: PendingRecord, verifier: Secret) -> None:
        with anyio.CancelScope(shield=True), self._activity.busy():
            await self._store.restore_pending(record, verifier)
        self._wake()

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
        details: dict[str, object] = {
            "consent_id": result.consent_id,
            "scope": " ".join(grant.scope),
            "replaced": replaced,
            "different_human": different,
            "refresh_expires_at": rfc3339(grant.refresh_expires_at),
        }
        if different:
            details["expected_human_id"] = record.human_id
        self._events.publish(Event("consent.granted", human_id, now, details))
        _log.info("consent granted", human_id=human_id, **details)
        if different:
            _log.warning(
                "a different human approved the consent; the named human's grant is unchanged",
                human_id=human_id,
                expected_human_id=record.human_id,
            )
        if set(grant.scope) != set(record.scope):
            _log.info(
                "the server granted other scopes than asked for",
                human_id=human_id,
                requested=" ".join(record.scope),
                granted=" ".join(grant.scope),
            )
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
        details = {
            "consent_id": consent_id(record.state_id),
            "scope": " ".join(record.scope),
            "reason": "expired",
            "expired_at": rfc3339(record.expires_at),
        }
        self._events.publish(Event("consent.abandoned", record.human_id, now, details))
        _log.info("consent abandoned", human_id=record.human_id, **details)

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
                    await self.prune(now)
                    continue
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
