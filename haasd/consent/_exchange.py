"""The callback's code exchange, and what a failure of it costs.

A failure before the code reached the server puts the consent back
(ExchangeUnavailableError: finish again); one after uses it up (ExchangeFailedError) and
revokes whatever the server issued that haasd cannot keep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, NoReturn

import anyio
import structlog

from haasd.authclient import AuthClient
from haasd.clock import Activity, Clock
from haasd.consent._advice import retry_message, spent_message, unnamed_message
from haasd.consent._announce import announce_failed
from haasd.consent._oauth import consent_id
from haasd.consent._revoke import revoke_answer, revoke_token
from haasd.errors import (
    AuthError,
    ConsentForbiddenError,
    ExchangeFailedError,
    ExchangeUnavailableError,
    TransientAuthError,
)
from haasd.events import EventBus
from haasd.grantstore import GrantStore
from haasd.secret import Secret
from haasd.store import PendingRecord
from haasd.timefmt import rfc3339
from haasd.tokens import TokenResponse

__all__ = ["UNNAMED_HUMAN", "CodeExchange"]

#: the TransientAuthError type of an answer that names no human for a consent naming none
UNNAMED_HUMAN: Final = "unnamed_human"

_log = structlog.get_logger("haasd.consent")


class CodeExchange:
    """Exchanges a consent's code at the token endpoint; puts the consent back, or uses it
    up and revokes, when that fails."""

    __slots__ = ("_activity", "_auth", "_clock", "_events", "_store", "_wake", "names_humans")

    def __init__(
        self,
        auth: AuthClient,
        store: GrantStore,
        events: EventBus,
        clock: Clock,
        activity: Activity,
        wake: Callable[[], None],
    ) -> None:
        self._auth = auth
        self._store = store
        self._events = events
        self._clock = clock
        #: busy during store I/O, so a ManualClock's settle hook waits for it
        self._activity = activity
        #: called when a consent is put back: the expiry loop looks again
        self._wake = wake
        #: the last code exchange without a named human: did its answer name one? (None:
        #: not known yet) — in memory only, so a start can warn before a sure refusal
        self.names_humans: bool | None = None

    async def exchange(self, record: PendingRecord, verifier: Secret, code: str) -> TokenResponse:
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
            await self.put_back(record, verifier)
            _log.warning("code exchange failed; consent kept", consent_id=cid, error=str(exc))
            raise ExchangeUnavailableError(
                exc.error_type,
                retry_message(str(exc), rfc3339(record.expires_at)),
                expires_at=record.expires_at,
                retry_after=exc.retry_after,
            ) from exc
        except AuthError as exc:
            self._announce_failed(record, exc.error_type, record.human_id)
            _log.warning("code exchange refused", consent_id=cid, reason=str(exc))
            raise ExchangeFailedError(
                exc.error_type,
                f"the code exchange was refused: {exc}; start a new consent",
                status=exc.status,
            ) from exc
        except BaseException:
            # cancelled (or a defect): the server may not have seen the code; keep it
            await self.put_back(record, verifier)
            raise
        if record.human_id is None:
            self.names_humans = True  # the server named the human itself
        return answer

    async def _spent(self, record: PendingRecord, exc: TransientAuthError) -> NoReturn:
        """The code reached the server and the answer is lost or unusable: the consent is
        used up (a retry could only get invalid_grant); revoke what was issued."""
        unnamed = exc.error_type == UNNAMED_HUMAN
        if unnamed:
            self.names_humans = False
        gone = await revoke_token(self._auth, exc.issued_refresh_token, "refresh_token")
        answered = exc.status is not None and 200 <= exc.status < 300
        message = (
            unnamed_message(gone.note)
            if unnamed
            else spent_message(str(exc), answered=answered, note=gone.note)
        )
        self._announce_failed(record, exc.error_type, record.human_id, gone.revoked)
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

    async def refuse(self, record: PendingRecord, answer: TokenResponse) -> NoReturn:
        """The human who approved is outside the finisher's rules: revoke what the exchange
        gave, store nothing, and say so (raises ConsentForbiddenError)."""
        gone = await revoke_answer(self._auth, answer)
        self._announce_failed(record, "human_not_allowed", record.human_id, gone.revoked)
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

    async def put_back(self, record: PendingRecord, verifier: Secret) -> None:
        with anyio.CancelScope(shield=True), self._activity.busy():
            await self._store.restore_pending(record, verifier)
        self._wake()

    def _announce_failed(
        self,
        record: PendingRecord,
        error: str,
        human_id: str | None,
        revoked: bool | None = None,
    ) -> None:
        announce_failed(self._events, record, error, human_id, revoked, self._clock.time())
