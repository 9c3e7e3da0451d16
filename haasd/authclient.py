"""The one HTTP client of the HaaS ``/token`` endpoint: code exchange, refresh, revocation.

Every request first waits for the :class:`~haasd.ratelimit.RateBudget`; every reply, of
any status, feeds it its ``X-RateLimit-*`` headers, and a 429 blocks it for the wait the
server named. Bodies follow the HaaS docs (JSON) or are form-encoded
(``request_format="form"``, RFC 6749). The client authenticates as ``auth_method`` says:
``client_secret_post`` puts ``client_id`` and ``client_secret`` in the body (the HaaS
docs), ``client_secret_basic`` sends them in an ``Authorization: Basic`` header, each
form-urlencoded first (RFC 6749 §2.3.1), and none in the body.

The contract: :meth:`AuthClient.exchange_code` and :meth:`AuthClient.refresh` return a
checked :class:`~haasd.tokens.TokenResponse` or raise an :class:`~haasd.errors.AuthError`;
nothing else escapes but cancellation. :meth:`AuthClient.revoke` (RFC 7009, when a
``revocation_url`` is configured) is best effort: it says whether the server took the
token and never raises.

What a reply means — which error, whether the server may have acted on the request
(``sent``), how long the budget must wait — is :func:`haasd.replies.interpret`'s, a pure
function with the whole table; this module does the I/O around it and applies its
rate-limit note to the budget. Failures before any reply:

=========================================  =========================================  =====
what happened                              raised (``error_type``)                    sent
=========================================  =========================================  =====
no connection (refused, DNS, timeout)      TransientAuthError ("network"/"timeout")   False
read timeout, reset, broken reply          TransientAuthError ("timeout"/"network")   True
=========================================  =========================================  =====

``sent`` True: a rotated refresh token may have been issued and lost, and the refresher
retries promptly with the one it holds.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Final, Literal, Self

import anyio
import httpx
import structlog

from haasd import __version__
from haasd.clock import Activity
from haasd.config import AuthMethod, HaasConfig
from haasd.credentials import basic_authorization, hidden, with_credentials
from haasd.errors import AuthError, LeaseEndedError, TransientAuthError
from haasd.ratelimit import RateBudget
from haasd.replies import (
    AUTH_METHODS,
    MAX_BODY,
    Asked,
    RequestFormat,
    RequestKind,
    interpret,
    outcome_label,
    rate_limit_note,
)
from haasd.secret import Secret
from haasd.tokens import DEFAULT_LIFETIME, MAX_LIFETIME, TokenResponse

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

#: RFC 7009 §2.1
TokenTypeHint = Literal["refresh_token", "access_token"]

DEFAULT_TIMEOUT: Final = httpx.Timeout(connect=5.0, read=10.0, write=10.0, pool=5.0)
#: A whole exchange (connect, send, read) ends after this, however slowly bytes trickle.
DEFAULT_DEADLINE: Final = 30.0
_LIMITS: Final = httpx.Limits(max_connections=20, max_keepalive_connections=10)

_log = structlog.get_logger(__name__)


@dataclass(slots=True)
class AuthClientStats:
    """Figures for /metrics: requests by (kind, outcome), and the last answer's."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    last_latency: float | None = None
    last_status: int | None = None


@dataclass(frozen=True, slots=True)
class _Reply:
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
        if auth_method not in AUTH_METHODS:
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
            token_url=haas.token_url, client_id=haas.client_id, client_secret=client_secret,
            budget=budget, request_format=haas.token_request_format,
            auth_method=haas.token_endpoint_auth_method, revocation_url=haas.revocation_url,
            default_lifetime=haas.default_token_lifetime, transport=transport,
            activity=activity,
        )  # fmt: skip

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
        asked = self._asked("exchange", (code, code_verifier), human_id=human_id, scope=scope)
        return await self._call(asked, fields)

    async def refresh(
        self, refresh_token: Secret, *, human_id: str, scope: tuple[str, ...],
        may_send: Callable[[], bool] | None = None,
    ) -> TokenResponse:  # fmt: skip
        """A new access token for ``human_id``; ``refresh_token`` None in the answer means
        the server kept the old one (RFC 6749 §6). ``may_send`` is asked once the rate
        budget let the request go, right before it goes (in a cluster: is the grant's lease
        still surely held?); False: :class:`TransientAuthError`, nothing sent."""
        token = refresh_token.reveal()
        fields = {"grant_type": "refresh_token", "refresh_token": token}
        asked = self._asked("refresh", (token,), human_id=human_id, scope=scope)
        return await self._call(asked, fields, may_send)

    # --- revocation (RFC 7009) ------------------------------------------------------------

    async def revoke(self, token: Secret, *, hint: TokenTypeHint = "refresh_token") -> bool:
        """Ask the server to revoke ``token``; True when it answered 2xx (RFC 7009 §2.2:
        200, also for a token it does not know). False when no revocation endpoint is
        configured, or on any failure — logged once as a warning, never the token; never
        raises :class:`~haasd.errors.AuthError` (best effort, for tokens haasd drops). It
        waits for the rate budget at most one request's deadline (callers shield it)."""
        return await self.try_revoke(token, hint=hint, again=False) is True

    async def try_revoke(
        self, token: Secret, *, hint: TokenTypeHint = "refresh_token", again: bool = True
    ) -> bool | float:
        """:meth:`revoke`; with ``again``, a failure the server may get over (RFC 7009 §2.2.1:
        a 503; a 5xx, 429, lost connection, the budget) gives the wait named (0.0: none)."""
        if self._revocation_url is None:
            return False
        wait = self._budget.ready_in()
        if wait > self._deadline:
            self.stats.requests[("revoke", "rate_limited")] += 1
            if again:
                return wait
            _not_revoked(hint, f"the rate budget allows no request for {wait:.0f}s")
            return False
        value = token.reveal()
        fields = {"token": value, "token_type_hint": hint}
        await self._budget.acquire()
        started = time.perf_counter()
        try:
            status, _ = await self._request(
                self._asked("revoke", (value,)), fields, self._revocation_url, form=True
            )
        except AuthError as exc:
            self._record("revoke", outcome_label(exc), exc.status, started)
            if again and isinstance(exc, TransientAuthError):
                _log.info("token not revoked yet", hint=hint, error=str(exc))
                return float(exc.retry_after or 0.0)
            _not_revoked(hint, str(exc))
            return False
        self._record("revoke", "ok", status, started)
        return True

    # --- one request --------------------------------------------------------------------

    def _asked(
        self,
        kind: RequestKind,
        secrets: Iterable[str | None],
        *,
        human_id: str | None = None,
        scope: tuple[str, ...] | None = None,
    ) -> Asked:
        return Asked(
            kind,
            human_id=human_id,
            scope=scope,
            hidden=hidden(secrets, self._client_id, self._client_secret.reveal()),
            client_id=self._client_id,
            auth_method=self._auth_method,
            request_format=self._format,
            default_lifetime=self._default_lifetime,
            max_body=self._max_body,
        )

    async def _call(
        self, asked: Asked, fields: dict[str, str], may_send: Callable[[], bool] | None = None
    ) -> TokenResponse:
        """A token request: its checked tokens, or the error its reply stands for."""
        await self._budget.acquire()  # outside "busy": waiting for the clock is not I/O
        if may_send is not None and not may_send():  # the wait outlasted the leave to send
            why = "the grant's lease ended before the request could go"
            raise LeaseEndedError("lease_ended", why, sent=False)
        started = time.perf_counter()  # real time: latency is a measurement, not a schedule
        form = self._format == "form"
        try:
            status, tokens = await self._request(asked, fields, self._token_url, form=form)
        except AuthError as exc:
            self._record(asked.kind, outcome_label(exc), exc.status, started)
            raise
        self._record(asked.kind, "ok", status, started)
        assert tokens is not None  # noqa: S101 - a 2xx to a token request has tokens
        if tokens.lifetime_defaulted:
            self._warn_default_lifetime()
        return tokens

    async def _request(
        self, asked: Asked, fields: dict[str, str], url: str, *, form: bool
    ) -> tuple[int, TokenResponse | None]:
        """Send one request, read what its reply means and tell the budget what the reply
        says about it; (status, tokens) or the reply's AuthError raised."""
        reply = await self._send(fields, url, form=form)
        meaning = interpret(reply.status, reply.headers, reply.body, asked, self._clock.time())
        if meaning.block_for is not None:
            self._budget.block_for(meaning.block_for)  # the budget caps (and logs) an absurd wait
        if isinstance(meaning.result, AuthError):
            raise meaning.result
        return reply.status, meaning.result

    def _warn_default_lifetime(self) -> None:
        if self._lifetime_warned:
            return
        self._lifetime_warned = True
        _log.warning(
            "the token endpoint's answers give no expires_in; access tokens are taken to "
            "live haas.default_token_lifetime",
            default_token_lifetime=self._default_lifetime,
        )

    async def _send(self, fields: dict[str, str], url: str, *, form: bool) -> _Reply:
        secret = self._client_secret.reveal()
        content, headers = with_credentials(fields, self._auth_method, self._client_id, secret)
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
        return _Reply(response.status_code, response.headers, body)

    def _observe(self, headers: httpx.Headers) -> None:
        note = rate_limit_note(headers)
        self._budget.observe(note.limit, note.remaining, note.reset_epoch)

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


def _not_revoked(hint: TokenTypeHint, reason: str) -> None:
    msg = "token not revoked; it stays valid at the server until it expires"
    _log.warning(msg, hint=hint, error=reason)
