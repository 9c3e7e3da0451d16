"""The one HTTP client of the HaaS ``/token`` endpoint: code exchange, refresh, revocation.

Every request first waits for the :class:`~haasd.ratelimit.RateBudget`; every answer, of
any status, feeds it its ``X-RateLimit-*`` headers. Bodies follow the HaaS docs (JSON)
or are form-encoded (``request_format="form"``, RFC 6749). The client authenticates as
``auth_method`` says: ``client_secret_post`` puts ``client_id`` and ``client_secret`` in
the body (the HaaS docs), ``client_secret_basic`` sends them in an ``Authorization:
Basic`` header, each form-urlencoded first (RFC 6749 §2.3.1), and none in the body.

The contract: :meth:`AuthClient.exchange_code` and :meth:`AuthClient.refresh` return a
checked :class:`~haasd.tokens.TokenResponse` or raise an :class:`~haasd.errors.AuthError`;
nothing else escapes but cancellation. :meth:`AuthClient.revoke` (RFC 7009, when a
``revocation_url`` is configured) is best effort: it says whether the server took the
token and never raises.

=========================================  =========================================  =====
what happened                              raised (``error_type``)                    sent
=========================================  =========================================  =====
no connection (refused, DNS, timeout)      TransientAuthError ("network"/"timeout")   False
read timeout, reset, broken answer         TransientAuthError ("timeout"/"network")   True
2xx that is no token answer (not JSON,     TransientAuthError ("malformed_response")  True
HTML, > 64 KiB, a field missing or wrong)
2xx first grant naming no human, to a      TransientAuthError ("unnamed_human")       True
consent that named none
3xx (never followed)                       TransientAuthError ("redirect")            False
429, or the docs' ``rate_limit_exceeded``  RateLimitedError (with ``retry_after``)    False
502, 504 (a gateway lost the answer)       TransientAuthError (``server_error``)      True
500, 503, other 5xx, 408,                  TransientAuthError                         False
``temporarily_unavailable``
``invalid_grant`` (below 500)              InvalidGrantError
``invalid_client``, ``unauthorized_client``, any 401: ClientAuthError
``invalid_request``, ``invalid_scope``, ``unsupported_grant_type``, other 4xx:
RequestRejectedError
=========================================  =========================================  =====

``sent`` answers "may the server have acted on this request and the answer been lost?";
when True a rotated refresh token may have been issued and lost, and the refresher
retries promptly with the one it holds. A server that reports its own failure (500, 503)
is backed off from instead (issue 3 §4). A malformed 2xx is a lost answer — the server
granted, we cannot read it — so it reaches callers as ``malformed_response`` with
``sent``, never as :class:`~haasd.errors.TokenResponseError` (that is its ``__cause__``).
Whenever such an answer carried a well-formed refresh token, the error's
``issued_refresh_token`` hands it over: on a refresh the server has rotated to it (keep
it); on a code exchange it is a grant nobody keeps (revoke it). ``unnamed_human`` (its
cause an :class:`~haasd.errors.UnnamedHumanError`) is such an answer too: retrying cannot
help, the code is spent.

Refusals that a setting explains say which: ``unsupported_grant_type`` or
``invalid_request`` to a JSON body suggest ``haas.token_request_format = "form"``;
``invalid_client`` (or any 401) names ``haas.token_endpoint_auth_method``.

Both error shapes are read: RFC 6749's ``{"error", "error_description"}`` and the docs'
``{"error": {"code", "type", "message", "retry_after"}}``. Messages carry the status, the
error code and the server's description, redacted and truncated — never a token, the
client secret or the raw body.
"""

from __future__ import annotations

import json
import math
import re
import time
from base64 import b64encode
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Final, Literal, Self
from urllib.parse import quote_plus, urlsplit

import anyio
import httpx
import structlog

from haasd import __version__
from haasd.clock import Activity
from haasd.config import AuthMethod, HaasConfig
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
from haasd.ratelimit import MAX_WAIT, RateBudget
from haasd.secret import Secret
from haasd.tokens import (
    DEFAULT_LIFETIME,
    MAX_LIFETIME,
    TokenResponse,
    parse_first_grant,
    parse_refresh_answer,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_BODY",
    "AuthClient",
    "AuthClientStats",
    "AuthMethod",
    "RequestFormat",
    "TokenTypeHint",
    "basic_authorization",
]

RequestFormat = Literal["json", "form"]
#: RFC 7009 §2.1
TokenTypeHint = Literal["refresh_token", "access_token"]
_AUTH_METHODS: Final[tuple[AuthMethod, ...]] = ("client_secret_post", "client_secret_basic")

DEFAULT_TIMEOUT: Final = httpx.Timeout(connect=5.0, read=10.0, write=10.0, pool=5.0)
#: Answers larger than this are not read further (a token answer is well under 8 KiB).
MAX_BODY: Final = 64 * 1024
#: A whole exchange (connect, send, read) ends after this, however slowly bytes trickle.
DEFAULT_DEADLINE: Final = 30.0
#: A 429 that names no wait holds the budget back this long.
DEFAULT_RATE_LIMIT_BLOCK: Final = 10.0
_LIMITS: Final = httpx.Limits(max_connections=20, max_keepalive_connections=10)
_DESCRIPTION_MAX: Final = 200
_CODE_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
#: counter labels: by type, else a TransientAuthError's own error_type, else "transient"
_OUTCOMES: Final[tuple[tuple[type[AuthError], str], ...]] = (
    (RateLimitedError, "rate_limited"),
    (InvalidGrantError, "invalid_grant"),
    (ClientAuthError, "client_auth"),
    (RequestRejectedError, "rejected"),
)
_OWN_LABELS: Final = frozenset(
    {"network", "timeout", "redirect", "malformed_response", "unnamed_human"}
)
_TOKEN_ENDPOINT: Final = ("token endpoint", "haas.token_url")
_REVOCATION_ENDPOINT: Final = ("revocation endpoint", "haas.revocation_url")
_FORM_HINT: Final = (
    "; a server that reads only form bodies answers a JSON body so: "
    'try haas.token_request_format = "form"'
)

_log = structlog.get_logger(__name__)


@dataclass(slots=True)
class AuthClientStats:
    """Figures for /metrics: requests by (kind, outcome), and the last answer's."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    last_latency: float | None = None
    last_status: int | None = None


def basic_authorization(client_id: str, client_secret: str) -> str:
    """The ``Authorization`` header value of ``client_secret_basic`` (RFC 6749 §2.3.1):
    id and secret each form-urlencoded (UTF-8, space as ``+``), joined by ``:``, base64."""
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
    return "Basic " + b64encode(pair.encode("ascii")).decode("ascii")


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: httpx.Headers
    body: bytes | None  # None: larger than the cap


class AuthClient:
    """Talks to ``token_url`` (and ``revocation_url``, if any) over one connection pool;
    ``async with`` it, or aclose().

    ``default_lifetime``: seconds an access token is taken to live when an answer has no
    ``expires_in`` (a warning is logged the first time a server leaves it out).
    """

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        client_secret: Secret,
        budget: RateBudget,
        request_format: RequestFormat = "json",
        auth_method: AuthMethod = "client_secret_post",
        revocation_url: str | None = None,
        default_lifetime: int = DEFAULT_LIFETIME,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
        max_body: int = MAX_BODY,
        activity: Activity | None = None,
    ) -> None:
        if request_format not in ("json", "form"):
            raise ValueError("request_format must be 'json' or 'form'")
        if auth_method not in _AUTH_METHODS:
            raise ValueError("auth_method must be 'client_secret_post' or 'client_secret_basic'")
        if isinstance(default_lifetime, bool) or not 0 < default_lifetime <= MAX_LIFETIME:
            raise ValueError(f"default_lifetime must be between 1 and {MAX_LIFETIME} seconds")
        self._token_url = token_url
        self._revocation_url = revocation_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._auth_method: AuthMethod = auth_method
        self._default_lifetime = default_lifetime
        self._lifetime_warned = False
        self._budget = budget
        self._clock = budget.clock
        self._format = request_format
        self._deadline = deadline
        self._max_body = max_body
        self._activity = activity
        self.stats = AuthClientStats()
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=timeout,
            limits=_LIMITS,
            follow_redirects=False,
            headers={"User-Agent": f"haasd/{__version__}", "Accept": "application/json"},
        )

    @classmethod
    def from_config(
        cls,
        haas: HaasConfig,
        client_secret: Secret,
        budget: RateBudget,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        activity: Activity | None = None,
    ) -> AuthClient:
        return cls(
            token_url=haas.token_url,
            client_id=haas.client_id,
            client_secret=client_secret,
            budget=budget,
            request_format=haas.token_request_format,
            auth_method=haas.token_endpoint_auth_method,
            revocation_url=haas.revocation_url,
            default_lifetime=haas.default_token_lifetime,
            transport=transport,
            activity=activity,
        )

    @property
    def can_revoke(self) -> bool:
        """Whether a revocation endpoint is configured (:meth:`revoke` can do anything)."""
        return self._revocation_url is not None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- the two grants ----------------------------------------------------------------

    async def exchange_code(
        self,
        code: str,
        redirect_uri: str,
        code_verifier: str | None = None,
        *,
        human_id: str | None = None,
        scope: tuple[str, ...] | None = None,
    ) -> TokenResponse:
        """Trade an authorization code (and its PKCE verifier) for a first grant.

        ``human_id`` and ``scope`` are what the consent asked for: they stand in for an
        answer without ``human_id`` or ``scope`` (a plain RFC 6749 server). An answer
        naming no human when ``human_id`` is None raises ``unnamed_human``.
        """
        fields = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        if code_verifier is not None:
            fields["code_verifier"] = code_verifier

        def parse(data: object) -> TokenResponse:
            return parse_first_grant(
                data, human_id=human_id, scope=scope, default_lifetime=self._default_lifetime
            )

        return await self._call("exchange", fields, (code, code_verifier), parse)

    async def refresh(
        self, refresh_token: Secret, *, human_id: str, scope: tuple[str, ...]
    ) -> TokenResponse:
        """A new access token for ``human_id``; ``refresh_token`` None in the answer means
        the server kept the old one (RFC 6749 §6)."""
        token = refresh_token.reveal()
        fields = {"grant_type": "refresh_token", "refresh_token": token}

        def parse(data: object) -> TokenResponse:
            return parse_refresh_answer(
                data, human_id=human_id, scope=scope, default_lifetime=self._default_lifetime
            )

        return await self._call("refresh", fields, (token,), parse)

    # --- revocation (RFC 7009) ------------------------------------------------------------

    async def revoke(self, token: Secret, *, hint: TokenTypeHint = "refresh_token") -> bool:
        """Ask the server to revoke ``token``; True when it answered 2xx (RFC 7009 §2.2:
        200, also for a token it does not know). False when no revocation endpoint is
        configured, or on any failure — logged once as a warning, never the token; never
        raises :class:`~haasd.errors.AuthError` (best effort, for tokens haasd drops).

        It waits for the rate budget at most as long as one request may take (the
        deadline), so that a caller shielding it from cancellation is never held for long.
        """
        if self._revocation_url is None:
            return False
        wait = self._budget.ready_in()
        if wait > self._deadline:
            self.stats.requests[("revoke", "rate_limited")] += 1
            _not_revoked(hint, f"the rate budget allows no request for {wait:.0f}s")
            return False
        value = token.reveal()
        fields = {"token": value, "token_type_hint": hint}
        hidden = self._hidden((value,))
        await self._budget.acquire()
        started = time.perf_counter()
        status: int | None = None
        try:
            answer = await self._send(fields, self._revocation_url, form=True)
            status = answer.status
            if not 200 <= status < 300:
                data = None if answer.body is None else _decode(answer.body)
                raise self._error(status, answer.headers, data, hidden, _REVOCATION_ENDPOINT)
        except AuthError as exc:
            self._record("revoke", _outcome(exc), status, started)
            _not_revoked(hint, str(exc))
            return False
        self._record("revoke", "ok", status, started)
        return True

    # --- one request --------------------------------------------------------------------

    def _authenticated(self, fields: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """(body, headers) of a request carrying ``fields`` and the client's credentials,
        by the configured method: in the body, or only in a Basic header."""
        if self._auth_method == "client_secret_basic":
            header = basic_authorization(self._client_id, self._client_secret.reveal())
            return fields, {"Authorization": header}
        credentials = {"client_id": self._client_id, "client_secret": self._client_secret.reveal()}
        return {**fields, **credentials}, {}

    def _hidden(self, secrets: Iterable[str | None]) -> tuple[str, ...]:
        """What must never reach a message: the request's secrets and the client secret,
        also as encoded in a form body or a Basic header (a server may echo either)."""
        secret = self._client_secret.reveal()
        encoded = (
            quote_plus(secret, safe=""),
            basic_authorization(self._client_id, secret).removeprefix("Basic "),
        )
        return tuple(s for s in (*secrets, secret, *encoded) if s)

    async def _call(
        self,
        kind: str,
        fields: dict[str, str],
        secrets: Iterable[str | None],
        parse: Callable[[object], TokenResponse],
    ) -> TokenResponse:
        hidden = self._hidden(secrets)
        await self._budget.acquire()  # outside "busy": waiting for the clock is not I/O
        started = time.perf_counter()  # real time: latency is a measurement, not a schedule
        status: int | None = None
        try:
            answer = await self._send(fields, self._token_url, form=self._format == "form")
            status = answer.status
            result = self._interpret(answer, parse, hidden)
        except AuthError as exc:
            self._record(kind, _outcome(exc), status, started)
            raise
        self._record(kind, "ok", status, started)
        if result.lifetime_defaulted:
            self._warn_default_lifetime()
        return result

    def _warn_default_lifetime(self) -> None:
        if self._lifetime_warned:
            return
        self._lifetime_warned = True
        _log.warning(
            "the token endpoint's answers give no expires_in; access tokens are taken to "
            "live haas.default_token_lifetime",
            default_token_lifetime=self._default_lifetime,
        )

    async def _send(self, fields: dict[str, str], url: str, *, form: bool) -> _Answer:
        content, headers = self._authenticated(fields)
        if form:
            request = self._http.build_request("POST", url, data=content, headers=headers)
        else:
            request = self._http.build_request("POST", url, json=content, headers=headers)
        host = request.url.host
        try:
            with self._activity.busy() if self._activity else nullcontext():
                with anyio.fail_after(self._deadline):
                    response = await self._http.send(request, stream=True, follow_redirects=False)
                    try:
                        self._observe(response.headers)
                        body = await _read_capped(response, self._max_body)
                    finally:
                        await response.aclose()
        except TimeoutError as exc:
            msg = f"no complete answer from {host} within {self._deadline:g}s"
            raise TransientAuthError("timeout", msg) from exc
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            kind = "network" if isinstance(exc, httpx.ConnectError) else "timeout"
            msg = f"could not connect to {host} ({type(exc).__name__})"
            raise TransientAuthError(kind, msg, sent=False) from exc
        except httpx.UnsupportedProtocol as exc:
            key = "haas.revocation_url" if url == self._revocation_url else "haas.token_url"
            msg = f"cannot send to {host}: unsupported URL scheme (check {key})"
            raise TransientAuthError("network", msg, sent=False) from exc
        except httpx.TimeoutException as exc:
            msg = f"{host} did not answer in time ({type(exc).__name__}); it may have acted"
            raise TransientAuthError("timeout", msg) from exc
        except httpx.HTTPError as exc:
            msg = f"the exchange with {host} broke off ({type(exc).__name__}); it may have acted"
            raise TransientAuthError("network", msg) from exc
        return _Answer(response.status_code, response.headers, body)

    def _observe(self, headers: httpx.Headers) -> None:
        limit, remaining, reset = (
            _number(headers, f"x-ratelimit-{name}") for name in ("limit", "remaining", "reset")
        )
        self._budget.observe(
            None if limit is None else int(limit),
            None if remaining is None else int(remaining),
            reset,
        )

    def _interpret(
        self, answer: _Answer, parse: Callable[[object], TokenResponse], hidden: tuple[str, ...]
    ) -> TokenResponse:
        status = answer.status
        data = None if answer.body is None else _decode(answer.body)
        if 200 <= status < 300:
            if answer.body is None:
                problem = f"it is larger than {self._max_body} bytes"
            elif data is None:
                kind = _scrub(answer.headers.get("content-type", "no content type"), hidden)
                problem = f"it is not JSON ({kind})"
            else:
                try:
                    return parse(data)
                except TokenResponseError as exc:
                    raise _unusable(status, exc) from exc
            msg = f"the token endpoint answered {status}, but {problem}"
            raise TransientAuthError("malformed_response", msg, status=status)
        raise self._error(status, answer.headers, data, hidden)

    def _error(
        self,
        status: int,
        headers: httpx.Headers,
        data: object,
        hidden: tuple[str, ...],
        endpoint: tuple[str, str] = _TOKEN_ENDPOINT,
    ) -> AuthError:
        name, url_key = endpoint
        code, description, body_retry = _server_error(data)
        if code is not None and (not _CODE_RE.fullmatch(code) or any(s in code for s in hidden)):
            code = "unknown_error"
        msg = f"the {name} answered {status}" + (f" {code}" if code else "")
        if description:
            msg += f": {_scrub(description, hidden)}"
        if 300 <= status < 400:
            location = urlsplit(headers.get("location", ""))  # no credentials, no query
            target = _scrub(f"{location.scheme}://{location.hostname}{location.path}", hidden)
            msg += f"; redirect to {target} not followed (check {url_key})"
            return TransientAuthError("redirect", msg, status=status, sent=False)
        asked = self._retry_after(headers, body_retry)
        retry_after = None if asked is None else min(asked, MAX_WAIT)
        if status == 429 or code == "rate_limit_exceeded":
            # the budget caps (and logs) an absurd wait
            self._budget.block_for(DEFAULT_RATE_LIMIT_BLOCK if asked is None else asked)
            return RateLimitedError(
                code or "rate_limit_exceeded",
                msg,
                status=status,
                retry_after=retry_after,
                sent=False,
            )
        if code == "temporarily_unavailable" or status == 408 or status >= 500:
            # a gateway's 502/504: the server behind it may have acted and the answer is
            # lost; the rest say the request failed or was not handled (back off, §4)
            lost = status in (502, 504) and code != "temporarily_unavailable"
            default = "timeout" if status == 408 else "server_error"
            return TransientAuthError(
                code or default, msg, status=status, retry_after=retry_after, sent=lost
            )
        if code == "invalid_grant":
            return InvalidGrantError(code, msg, status=status)
        if code in ("invalid_client", "unauthorized_client") or status == 401:
            if code != "unauthorized_client":  # that one is about the grant type, not who
                msg += self._credentials_hint()
            return ClientAuthError(code or "unauthorized", msg, status=status)
        if status >= 400:
            if self._format == "json" and code in ("unsupported_grant_type", "invalid_request"):
                msg += _FORM_HINT
            return RequestRejectedError(code or f"http_{status}", msg, status=status)
        return TransientAuthError(code or f"http_{status}", msg, status=status)  # 1xx: odd

    def _credentials_hint(self) -> str:
        other = next(m for m in _AUTH_METHODS if m != self._auth_method)
        return (
            f"; check haas.client_id ({_scrub(self._client_id, ())}) and the client secret, "
            f'and haas.token_endpoint_auth_method: "{self._auth_method}" is in use, the '
            f'server may want "{other}"'
        )

    def _retry_after(self, headers: httpx.Headers, body_value: float | None) -> float | None:
        """The longer of the Retry-After header (seconds or HTTP-date) and the body's."""
        header_value = _retry_after_header(headers, self._clock.time())
        return max((w for w in (header_value, body_value) if w is not None), default=None)

    def _record(self, kind: str, outcome: str, status: int | None, started: float) -> None:
        latency = time.perf_counter() - started
        self.stats.requests[(kind, outcome)] += 1
        self.stats.last_latency = latency
        self.stats.last_status = status
        _log.debug(
            "haas.token_request",
            kind=kind,
            status=status,
            outcome=outcome,
            latency_ms=round(latency * 1000, 1),
        )


async def _read_capped(response: httpx.Response, cap: int) -> bytes | None:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        return None
    body = bytearray()
    async for chunk in response.aiter_bytes():  # decoded: a gzip bomb hits the cap too
        body += chunk
        if len(body) > cap:
            return None
    return bytes(body)


def _decode(body: bytes) -> object:
    """The JSON value of ``body``, or None if it is not JSON."""
    try:
        value: object = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value


def _number(headers: httpx.Headers, name: str) -> float | None:
    try:
        value = float(headers[name].strip())
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _retry_after_header(headers: httpx.Headers, now: float) -> float | None:
    raw = headers.get("retry-after", "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
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


def _not_revoked(hint: TokenTypeHint, reason: str) -> None:
    _log.warning(
        "token not revoked; it stays valid at the server until it expires",
        hint=hint,
        error=reason,
    )


def _unusable(status: int, exc: TokenResponseError) -> TransientAuthError:
    """The error for a 2xx haasd cannot use, handing over the refresh token it carried."""
    if isinstance(exc, UnnamedHumanError):
        error = TransientAuthError("unnamed_human", str(exc), status=status)
    else:
        msg = f"the token endpoint answered {status}, but {exc}"
        error = TransientAuthError("malformed_response", msg, status=status)
    error.issued_refresh_token = exc.refresh_token
    return error


def _outcome(exc: AuthError) -> str:
    for kind, label in _OUTCOMES:
        if isinstance(exc, kind):
            return label
    return exc.error_type if exc.error_type in _OWN_LABELS else "transient"
