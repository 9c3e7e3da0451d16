"""Every error haasd raises on purpose.

The tree keeps "whose fault" and "will retrying help" in the types themselves, so
callers decide with ``except``/``match`` on a class, never on a message string::

    HaasdError
    ├── ConfigError            bad configuration: names file, key and reason (exit 2)
    ├── StoreError             the encrypted token store
    │   ├── WrongKeyError      the key does not open this store (file left untouched)
    │   ├── StoreCorruptError  not a haasd store, or SQLite says it is damaged
    │   ├── StoreLockedError   another haasd holds this store
    │   ├── StoreNewerError    written by a newer haasd (schema version ahead of us)
    │   ├── FencedError        another instance changed the grant, or this one's lease
    │   │                      ended: the refresh did not begin (a cluster; re-read it)
    │   └── UnknownHumanError  no grant for that human
    ├── DecryptError           a sealed value failed authentication (tampered or moved)
    ├── NeedsReconsentError    the grant is dead until the human consents again (409)
    ├── TokenUnavailableError  no token with the time asked for can be had now (503)
    ├── TokenResponseError     a token answer that is not what the HaaS docs document
    │   └── UnnamedHumanError  neither the answer nor the consent names the human
    ├── AuthError              the HaaS token endpoint said no, or could not be reached
    │   ├── TransientAuthError     retry later: network, timeout, 5xx, 429, malformed 200
    │   │   ├── RateLimitedError   429 / rate budget: carries retry_after
    │   │   └── LeaseEndedError    a cluster's lease ended before the request could go
    │   ├── InvalidGrantError      permanent for one grant: the human must re-consent
    │   ├── ClientAuthError        invalid_client / unauthorized_client: daemon-wide fault
    │   └── RequestRejectedError   invalid_request, unsupported_grant_type, ...: our bug
    └── ConsentError           a consent cannot be started or finished (haasd.consent)
        ├── ConsentRequestError    malformed input: a human id, a callback URL not ours (400)
        │   └── ScopeError         '*', an unknown scope, or one beyond the configured (400)
        ├── ConsentLimitError      the bounded table of pending consents is full (503)
        ├── InvalidStateError      unknown, expired or used state: nothing exchanged (400)
        ├── ConsentDeniedError     the redirect carried an error: access_denied = "no" (403)
        ├── ExchangeFailedError    the server refused the code, or spent it and its answer
        │                          cannot be used (exchanged): start anew (502)
        ├── ExchangeUnavailableError  the exchange failed transiently: the same callback
        │                             may be finished again until the consent expires (503)
        ├── ConsentForbiddenError  the consent's human is outside the finisher's rules (403)
        └── ListenTimeoutError     no redirect reached the loopback listener in time
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from haasd.secret import Secret

__all__ = [
    "AuthError",
    "ClientAuthError",
    "ConfigError",
    "ConsentDeniedError",
    "ConsentError",
    "ConsentForbiddenError",
    "ConsentLimitError",
    "ConsentRequestError",
    "DecryptError",
    "ExchangeFailedError",
    "ExchangeUnavailableError",
    "FencedError",
    "HaasdError",
    "InvalidGrantError",
    "InvalidStateError",
    "LeaseEndedError",
    "ListenTimeoutError",
    "NeedsReconsentError",
    "RateLimitedError",
    "RequestRejectedError",
    "ScopeError",
    "StoreCorruptError",
    "StoreError",
    "StoreLockedError",
    "StoreNewerError",
    "TokenResponseError",
    "TokenUnavailableError",
    "TransientAuthError",
    "UnknownHumanError",
    "UnnamedHumanError",
    "WrongKeyError",
]


class HaasdError(Exception):
    """Base of every error haasd raises on purpose; its message is safe to show."""


class ConfigError(HaasdError):
    """A configuration value is missing, malformed or out of range."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        super().__init__(f"{file}: {key}: {reason}")


class StoreError(HaasdError):
    """The token store cannot do what was asked."""


class WrongKeyError(StoreError):
    """The configured key is not the key this store was created with."""


class StoreCorruptError(StoreError):
    """The file is not a haasd store, or SQLite reports damage."""


class StoreLockedError(StoreError):
    """Another haasd process holds this store."""


class StoreNewerError(StoreError):
    """The store's schema is newer than this haasd understands."""


class FencedError(StoreError):
    """A shared store refused to begin a refresh: the grant changed since this instance
    read it, or this instance no longer holds its lease. Nothing was spent; re-read."""


class UnknownHumanError(StoreError):
    """No grant is stored for this human."""

    def __init__(self, human_id: str) -> None:
        self.human_id = human_id
        super().__init__(f"no grant stored for human {human_id!r}")


class DecryptError(HaasdError):
    """A sealed value failed to open: wrong key, tampered, or moved to another row/column."""


class NeedsReconsentError(HaasdError):
    """The grant cannot give a token until the human consents again."""

    def __init__(self, human_id: str, reason: str | None) -> None:
        self.human_id = human_id
        self.reason = reason
        super().__init__(f"human {human_id!r} must re-consent: {reason or 'grant expired'}")


class TokenUnavailableError(HaasdError):
    """No token with the requested time left can be had now; ``retry_after`` seconds."""

    def __init__(self, human_id: str, reason: str, retry_after: float) -> None:
        self.human_id = human_id
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"no fresh token for {human_id!r}: {reason}")


class TokenResponseError(HaasdError):
    """A token response does not have the shape the HaaS docs give.

    ``refresh_token``: a refresh token the broken answer did carry, well formed. The
    server has rotated to it, so it must be kept although the rest cannot be used.
    """

    def __init__(self, message: str, *, refresh_token: Secret | None = None) -> None:
        super().__init__(message)
        self.refresh_token = refresh_token


class UnnamedHumanError(TokenResponseError):
    """A first grant whose human nobody named: the token endpoint's answer has no
    ``human_id`` (a plain RFC 6749 server) and the consent named no human either.

    ``refresh_token`` is what the server issued all the same: revoke it, or it is orphaned.
    """

    def __init__(self, *, refresh_token: Secret | None = None) -> None:
        super().__init__(
            "the token endpoint does not name the human and the consent named none; start "
            "the consent with a human id (--human / human_id)",
            refresh_token=refresh_token,
        )


class AuthError(HaasdError):
    """The HaaS token endpoint refused a request or could not be reached.

    ``error_type`` is the server's error code (``invalid_grant``, ``rate_limit_exceeded``,
    ...) or a haasd label (``network``, ``timeout``, ``malformed_response``,
    ``unnamed_human``).
    """

    def __init__(self, error_type: str, message: str, *, status: int | None = None) -> None:
        self.error_type = error_type
        self.status = status
        super().__init__(message)


class TransientAuthError(AuthError):
    """Trying again later may succeed; the stored tokens are still what we had."""

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        sent: bool = True,
    ) -> None:
        super().__init__(error_type, message, status=status)
        #: seconds the server asked us to wait, if it said
        self.retry_after = retry_after
        #: True when the server may have acted on the request and its answer was lost
        #: (read timeout, reset, malformed 2xx, 502/504): retry promptly with the same
        #: refresh token. False when it did not act (connect failed, 429, 503, ...).
        self.sent = sent
        #: a 2xx haasd cannot use that still carried a well-formed refresh token: on a
        #: refresh the server rotated to it, so it replaces the one held; on a code
        #: exchange it is a grant nobody keeps, to revoke (see :class:`TokenResponseError`)
        self.issued_refresh_token: Secret | None = None


class RateLimitedError(TransientAuthError):
    """HTTP 429 or an exhausted local budget; ``retry_after`` says how long to wait."""


class LeaseEndedError(TransientAuthError):
    """The grant's lease (a cluster) was no longer surely held when the request was about
    to go: nothing was sent; another instance may refresh it."""


class InvalidGrantError(AuthError):
    """The grant is gone (expired, revoked, or a refresh token was reused)."""


class ClientAuthError(AuthError):
    """The server rejects our client credentials: configuration, not the human."""


class RequestRejectedError(AuthError):
    """The server rejected the request itself (invalid_request, ...): a haasd defect."""


class ConsentError(HaasdError):
    """A consent (:mod:`haasd.consent`) cannot be started or finished."""


class ConsentRequestError(ConsentError):
    """The request is malformed: a human id, or a callback URL that is not a redirect to
    the pending consent's ``redirect_uri`` (nothing was consumed)."""


class ScopeError(ConsentRequestError):
    """Scopes that may not be asked for.

    ``error_type`` is ``invalid_scope`` (``*``, unknown, or none) or ``scope_not_allowed``
    (a known scope beyond the configured ones: a request may narrow, never widen).
    """

    def __init__(self, error_type: str, message: str, scopes: tuple[str, ...] = ()) -> None:
        self.error_type = error_type
        self.scopes = scopes
        super().__init__(message)


class ConsentLimitError(ConsentError):
    """As many consents are pending as the table holds; ``retry_after`` seconds until the
    first of them expires."""

    def __init__(self, limit: int, retry_after: float) -> None:
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(
            f"{limit} consents are pending, the most haasd keeps; finish one, or try again "
            f"in {retry_after:.0f}s when the oldest expires"
        )


class InvalidStateError(ConsentError):
    """The callback's state is not a pending consent: never issued, already used (or being
    used by another callback right now), or ``expired``. No code was exchanged."""

    def __init__(self, reason: str) -> None:
        #: ``unknown`` or ``expired``
        self.reason = reason
        what = "has expired" if reason == "expired" else "is unknown or was already used"
        super().__init__(f"the consent's state {what}; start a new consent")


class ConsentDeniedError(ConsentError):
    """The authorization server redirected back with an error instead of a code.

    ``error_type`` ``access_denied`` is the human saying no; any other (RFC 6749
    §4.1.2.1: ``invalid_scope``, ``server_error``, ...) ended the request on the server's
    side. Either way the pending consent is used up.
    """

    def __init__(self, error_type: str, description: str | None = None) -> None:
        self.error_type = error_type
        self.description = description
        message = (
            "the human declined the consent"
            if error_type == "access_denied"
            else f"the authorization server ended the consent with {error_type}"
        )
        super().__init__(message + (f": {description}" if description else ""))


class ExchangeFailedError(ConsentError):
    """The token endpoint refused the code for good (``error_type``: ``invalid_grant``
    for a used, expired or mismatched code or PKCE verifier, ``invalid_client``, ...),
    or the code may have been spent and the answer cannot be used (``exchanged``: a
    timeout after sending, a lost or unusable 2xx). The pending consent is used up:
    start a new one.

    ``revoked``: whether the tokens the server issued were revoked (RFC 7009); None when
    no token reached haasd.
    """

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        status: int | None = None,
        exchanged: bool = False,
        revoked: bool | None = None,
    ) -> None:
        self.error_type = error_type
        self.status = status
        self.exchanged = exchanged
        self.revoked = revoked
        super().__init__(message)


class ExchangeUnavailableError(ConsentError):
    """The code exchange failed in a way that may pass (network, timeout, 5xx, 429).

    The pending consent is kept: the same callback can be finished again until
    ``expires_at`` (wall-clock epoch seconds); ``retry_after`` is the server's wish, if any.
    """

    def __init__(
        self, error_type: str, message: str, *, expires_at: float, retry_after: float | None
    ) -> None:
        self.error_type = error_type
        self.expires_at = expires_at
        self.retry_after = retry_after
        super().__init__(message)


class ConsentForbiddenError(ConsentError):
    """The consent is for a human outside the rules of whoever finishes it; nothing of it
    was stored.

    ``exchanged`` False: the consent named that human, so it was left pending, unused (a
    peer whose rules cover the human may finish it). True: the human who approved was
    known only from the exchange; the consent is used up and the tokens it gave dropped
    — and revoked at the server when ``revoked`` is True (RFC 7009).
    """

    def __init__(self, message: str, *, exchanged: bool, revoked: bool | None = None) -> None:
        self.exchanged = exchanged
        self.revoked = revoked
        super().__init__(message)


class ListenTimeoutError(ConsentError):
    """The loopback listener saw no redirect before its timeout; the port is closed."""
