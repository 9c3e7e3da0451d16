"""What a reply of the token endpoint (or the revocation endpoint) means: pure, no I/O.

:func:`interpret` takes a reply as it arrived — status, headers, the body's bytes (None
when it was larger than the cap) — and what was asked (:class:`Asked`), and returns an
:class:`Interpretation`: the checked :class:`~haasd.tokens.TokenResponse` or the typed
:class:`~haasd.errors.AuthError` it stands for, and how long the rate budget must send
nothing (``block_for``). It spends nothing and blocks nothing: the caller
(:class:`~haasd.authclient.AuthClient`) applies ``block_for`` to its
:class:`~haasd.ratelimit.RateBudget`, and feeds it the ``X-RateLimit-*`` values that
:func:`rate_limit_note` reads from every reply's headers.

=========================================  =========================================  =====
the reply                                  result (``error_type``)                    sent
=========================================  =========================================  =====
2xx that is no token answer (not JSON,     TransientAuthError ("malformed_response")  True
HTML, over the cap, a field missing or
wrong)
2xx first grant naming no human, to a      TransientAuthError ("unnamed_human")       True
consent that named none
3xx (never followed)                       TransientAuthError ("redirect")            False
429, or the docs' ``rate_limit_exceeded``  RateLimitedError (``retry_after``;         False
                                           ``block_for`` set)
502, 504 (a gateway lost the reply)        TransientAuthError (``server_error``)      True
500, 503, other 5xx, 408,                  TransientAuthError                         False
``temporarily_unavailable``
``invalid_grant`` (below 500)              InvalidGrantError
``invalid_client``, ``unauthorized_client``, any 401: ClientAuthError
``invalid_request``, ``invalid_scope``, ``unsupported_grant_type``, other 4xx:
RequestRejectedError
=========================================  =========================================  =====

``sent`` answers "may the server have acted on this request and the reply been lost?".
A malformed 2xx is a lost reply — the server granted, haasd cannot read it — so it is
``malformed_response`` with ``sent``, never a :class:`~haasd.errors.TokenResponseError`
(that is its ``__cause__``); whenever it carried a well-formed refresh token, the error's
``issued_refresh_token`` hands it over. A server that reports its own failure (500, 503)
did not act: the caller backs off instead.

Both error shapes are read: RFC 6749's ``{"error", "error_description"}`` and the HaaS
docs' ``{"error": {"code", "type", "message", "retry_after"}}``. Messages carry the
status, the error code and the server's description, redacted and truncated — never a
token, the client secret (``Asked.hidden``) or the raw body. Refusals that a setting
explains say which: ``unsupported_grant_type`` or ``invalid_request`` to a JSON body
suggest ``haas.token_request_format = "form"``; ``invalid_client`` (or any 401) names
``haas.token_endpoint_auth_method``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Final, Literal
from urllib.parse import urlsplit

from haasd.config import AuthMethod
from haasd.errors import (
    AuthError,
    ClientAuthError,
    InvalidGrantError,
    RateLimitedError,
    RequestRejectedError,
    TokenResponseError,
    TransientAuthError,
    UnnamedHumanError,
)
from haasd.logs import REDACTED, redact_text
from haasd.ratewindow import MAX_WAIT
from haasd.tokens import DEFAULT_LIFETIME, TokenResponse, parse_first_grant, parse_refresh_answer

__all__ = [
    "AUTH_METHODS",
    "DEFAULT_RATE_LIMIT_BLOCK",
    "MAX_BODY",
    "Asked",
    "Interpretation",
    "RateLimitNote",
    "RequestFormat",
    "RequestKind",
    "interpret",
    "outcome_label",
    "rate_limit_note",
]

RequestFormat = Literal["json", "form"]
#: a code exchange, a refresh, or a revocation (RFC 7009)
RequestKind = Literal["exchange", "refresh", "revoke"]
AUTH_METHODS: Final[tuple[AuthMethod, ...]] = ("client_secret_post", "client_secret_basic")
#: Replies larger than this are not read further (a token answer is well under 8 KiB).
MAX_BODY: Final = 64 * 1024
#: A 429 that names no wait holds the budget back this long.
DEFAULT_RATE_LIMIT_BLOCK: Final = 10.0
_DESCRIPTION_MAX: Final = 200
_CODE_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
#: metrics labels: by type, else a TransientAuthError's own error_type, else "transient"
_OUTCOMES: Final[tuple[tuple[type[AuthError], str], ...]] = (
    (RateLimitedError, "rate_limited"),
    (InvalidGrantError, "invalid_grant"),
    (ClientAuthError, "client_auth"),
    (RequestRejectedError, "rejected"),
)
_OWN_LABELS: Final = frozenset(
    {"network", "timeout", "redirect", "malformed_response", "unnamed_human"}
)
_FORM_HINT: Final = (
    "; a server that reads only form bodies answers a JSON body so: "
    'try haas.token_request_format = "form"'
)


@dataclass(frozen=True, slots=True)
class Asked:
    """What was asked, and how: everything :func:`interpret` needs besides the reply.

    ``human_id`` and ``scope``: for an exchange, what the consent asked for (they stand
    in for a plain RFC 6749 answer without them; no human named and none in the answer is
    ``unnamed_human``); for a refresh, the grant's. ``hidden``: the strings no message may
    show (the request's secrets and the client secret, also as encoded on the wire).
    """

    kind: RequestKind
    human_id: str | None = None
    scope: tuple[str, ...] | None = None
    hidden: tuple[str, ...] = ()
    client_id: str = ""
    auth_method: AuthMethod = "client_secret_post"
    request_format: RequestFormat = "json"
    default_lifetime: int = DEFAULT_LIFETIME
    max_body: int = MAX_BODY

    def __post_init__(self) -> None:
        if self.kind == "refresh" and self.human_id is None:
            raise ValueError("a refresh is asked for a grant: human_id is required")


@dataclass(frozen=True, slots=True)
class RateLimitNote:
    """A reply's ``X-RateLimit-*`` headers, as numbers (None: absent or not a number)."""

    limit: int | None
    remaining: int | None
    reset_epoch: float | None


@dataclass(frozen=True, slots=True)
class Interpretation:
    """What a reply means.

    ``result``: the checked tokens, the error the reply stands for, or None for a 2xx to a
    revocation (accepted). ``block_for``: seconds the rate budget must send nothing (a
    429's wait, uncapped: the budget caps and logs an absurd one), else None.
    """

    result: TokenResponse | AuthError | None
    block_for: float | None = None


def rate_limit_note(headers: Mapping[str, str]) -> RateLimitNote:
    """The ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` values of ``headers``."""
    lowered = _lowered(headers)
    limit, remaining, reset = (
        _number(lowered, f"x-ratelimit-{name}") for name in ("limit", "remaining", "reset")
    )
    return RateLimitNote(
        None if limit is None else int(limit),
        None if remaining is None else int(remaining),
        reset,
    )


def interpret(
    status: int, headers: Mapping[str, str], body: bytes | None, asked: Asked, now: float
) -> Interpretation:
    """What the reply ``status``/``headers``/``body`` to ``asked`` means (see the table).

    ``body`` is None when the reply was larger than ``asked.max_body``; ``now`` (wall
    epoch seconds) turns a Retry-After date into seconds.
    """
    lowered = _lowered(headers)
    data = None if body is None else _decode(body)
    if not 200 <= status < 300:
        return _failure(status, lowered, data, asked, now)
    if asked.kind == "revoke":
        return Interpretation(None)  # RFC 7009 §2.2: the body means nothing
    if body is None:
        problem = f"it is larger than {asked.max_body} bytes"
    elif data is None:
        kind = _scrub(lowered.get("content-type", "no content type"), asked.hidden)
        problem = f"it is not JSON ({kind})"
    else:
        try:
            return Interpretation(_parse(data, asked))
        except TokenResponseError as exc:
            return Interpretation(_unusable(status, exc))
    msg = f"the token endpoint answered {status}, but {problem}"
    return Interpretation(TransientAuthError("malformed_response", msg, status=status))


def outcome_label(exc: AuthError) -> str:
    """The metrics label of a failed request (``rate_limited``, ``timeout``, …)."""
    for kind, label in _OUTCOMES:
        if isinstance(exc, kind):
            return label
    return exc.error_type if exc.error_type in _OWN_LABELS else "transient"


def _parse(data: object, asked: Asked) -> TokenResponse:
    lifetime = asked.default_lifetime
    if asked.kind == "refresh" and asked.human_id is not None:  # Asked requires the human
        return parse_refresh_answer(
            data, human_id=asked.human_id, scope=asked.scope, default_lifetime=lifetime
        )
    return parse_first_grant(
        data, human_id=asked.human_id, scope=asked.scope, default_lifetime=lifetime
    )


def _failure(
    status: int, headers: Mapping[str, str], data: object, asked: Asked, now: float
) -> Interpretation:
    """A reply that is not 2xx: its error, and the budget's block if it says "slow down"."""
    if asked.kind == "revoke":
        name, url_key = "revocation endpoint", "haas.revocation_url"
    else:
        name, url_key = "token endpoint", "haas.token_url"
    code, description, body_retry = _server_error(data)
    if code is not None and (not _CODE_RE.fullmatch(code) or any(s in code for s in asked.hidden)):
        code = "unknown_error"
    msg = f"the {name} answered {status}" + (f" {code}" if code else "")
    if description:
        msg += f": {_scrub(description, asked.hidden)}"
    if 300 <= status < 400:
        location = urlsplit(headers.get("location", ""))  # no credentials, no query
        target = _scrub(f"{location.scheme}://{location.hostname}{location.path}", asked.hidden)
        msg += f"; redirect to {target} not followed (check {url_key})"
        return Interpretation(TransientAuthError("redirect", msg, status=status, sent=False))
    wait = _longest(_retry_after_header(headers, now), body_retry)
    retry_after = None if wait is None else min(wait, MAX_WAIT)
    if status == 429 or code == "rate_limit_exceeded":
        error = RateLimitedError(
            code or "rate_limit_exceeded", msg, status=status, retry_after=retry_after, sent=False
        )
        return Interpretation(error, DEFAULT_RATE_LIMIT_BLOCK if wait is None else wait)
    if code == "temporarily_unavailable" or status == 408 or status >= 500:
        # a gateway's 502/504: the server behind it may have acted and the reply is lost;
        # the rest say the request failed or was not handled (the caller backs off)
        lost = status in (502, 504) and code != "temporarily_unavailable"
        default = "timeout" if status == 408 else "server_error"
        return Interpretation(
            TransientAuthError(
                code or default, msg, status=status, retry_after=retry_after, sent=lost
            )
        )
    return Interpretation(_refusal(status, code, msg, asked))


def _refusal(status: int, code: str | None, msg: str, asked: Asked) -> AuthError:
    """The error of a reply below 500 that is neither a redirect nor "slow down"."""
    if code == "invalid_grant":
        return InvalidGrantError(code, msg, status=status)
    if code in ("invalid_client", "unauthorized_client") or status == 401:
        if code != "unauthorized_client":  # that one is about the grant type, not who
            msg += _credentials_hint(asked)
        return ClientAuthError(code or "unauthorized", msg, status=status)
    if status >= 400:
        if asked.request_format == "json" and code in ("unsupported_grant_type", "invalid_request"):
            msg += _FORM_HINT
        return RequestRejectedError(code or f"http_{status}", msg, status=status)
    return TransientAuthError(code or f"http_{status}", msg, status=status)  # 1xx: odd


def _credentials_hint(asked: Asked) -> str:
    other = next(m for m in AUTH_METHODS if m != asked.auth_method)
    return (
        f"; check haas.client_id ({_scrub(asked.client_id, ())}) and the client secret, "
        f'and haas.token_endpoint_auth_method: "{asked.auth_method}" is in use, the '
        f'server may want "{other}"'
    )


def _unusable(status: int, exc: TokenResponseError) -> TransientAuthError:
    """The error for a 2xx haasd cannot use, handing over the refresh token it carried."""
    if isinstance(exc, UnnamedHumanError):
        error = TransientAuthError("unnamed_human", str(exc), status=status)
    else:
        msg = f"the token endpoint answered {status}, but {exc}"
        error = TransientAuthError("malformed_response", msg, status=status)
    error.issued_refresh_token = exc.refresh_token
    error.__cause__ = exc  # as `raise error from exc` would
    error.__suppress_context__ = True
    return error


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` by lower-case name (HTTP names are case-insensitive)."""
    return {name.lower(): value for name, value in headers.items()}


def _decode(body: bytes) -> object:
    """The JSON value of ``body``, or None if it is not JSON."""
    try:
        value: object = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value


def _number(headers: Mapping[str, str], name: str) -> float | None:
    try:
        value = float(headers[name].strip())
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _longest(*waits: float | None) -> float | None:
    """The longest of the waits given (the Retry-After header's and the body's), if any."""
    return max((w for w in waits if w is not None), default=None)


def _retry_after_header(headers: Mapping[str, str], now: float) -> float | None:
    """Retry-After in seconds: a number of seconds, or an HTTP-date measured from ``now``."""
    raw = headers.get("retry-after", "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, OverflowError):  # a year of 30 digits overflows
            return None
        if when.tzinfo is None:  # "-0000": UTC, says RFC 5322
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - now)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _server_error(data: object) -> tuple[str | None, str | None, float | None]:
    """(code, description, retry_after) from either error shape; Nones if neither."""
    if not isinstance(data, Mapping):
        return None, None, None
    error: object = data.get("error")
    if isinstance(error, str):  # RFC 6749 §5.2
        return error, _text(data.get("error_description")), None
    if isinstance(error, Mapping):  # the HaaS docs' 429 shape
        retry: object = error.get("retry_after")
        number = isinstance(retry, int | float) and not isinstance(retry, bool)
        seconds = float(retry) if number and isinstance(retry, int | float) else math.nan
        return (
            _text(error.get("type", error.get("code"))),
            _text(error.get("message")),
            seconds if math.isfinite(seconds) and seconds >= 0 else None,
        )
    return None, None, None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _scrub(text: str, hidden: tuple[str, ...]) -> str:
    """Server text made safe for a message: secrets out, one printable line, truncated."""
    for secret in hidden:
        text = text.replace(secret, REDACTED)
    text = "".join(ch if ch.isprintable() else " " for ch in redact_text(text))
    return text if len(text) <= _DESCRIPTION_MAX else text[: _DESCRIPTION_MAX - 1] + "…"
