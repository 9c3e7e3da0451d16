"""The :class:`Simulator`: the authorization server on a loopback TCP port."""

from __future__ import annotations

import base64
import bisect
import hashlib
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import anyio.abc
import httpx

from haasd.clock import Activity, Clock
from haasd.secret import Secret
from haasd.simulator._authority import Authority
from haasd.simulator._endpoints import Endpoints
from haasd.simulator._faults import (
    MALFORMED_KINDS,
    Drop,
    Fail,
    FaultBody,
    FaultScript,
    Malformed,
    MalformedKind,
    failure_reply,
)
from haasd.simulator._http import serve_connection
from haasd.simulator._ratelimit import Plan, plan_rate
from haasd.simulator._settings import Decision, Settings, decision_of
from haasd.simulator._stats import SimulatorStats, TokenRequestRecord

__all__ = ["Simulator", "SimulatorError"]

_DEFAULT_REDIRECT_URI = "https://app.example/callback"


class SimulatorError(Exception):
    """A convenience helper (:meth:`Simulator.consent`) could not do what was asked."""


class Simulator:
    """The HaaS authorization server with simulated humans, over real HTTP on loopback.

    Every lifetime and limit runs on ``clock`` (wall time, ``clock.time()``): access and
    refresh token expiry, the code lifetime, rate-limit windows and ``X-RateLimit-Reset``.
    Real time is used only for socket timeouts and :meth:`latency`.

    What a user must know:

    * A grant's refresh tokens die at *code exchange time* + ``refresh_token_lifetime``;
      rotation never extends it. Several grants per human may live side by side.
    * A code is spent by its first presentation, successful or not; presenting it again
      revokes the grant issued from it.
    * With rotation, a spent refresh token is honoured once more (``grace_replays``
      times; None: every time) within ``reuse_grace`` seconds, answering the *same*
      access and refresh token as the rotation did (so a client that lost the answer
      recovers it) — unless the new token was used already.
      Otherwise it is a reuse event: ``invalid_grant``, and the grant is revoked when
      ``reuse_detection`` is on.
    * The rate limit counts ``/token`` requests per claimed client id (a fixed 60-second
      window aligned to the minute); the human's ``/authorize`` visits are not counted
      but still carry the headers. Client authentication comes before ``grant_type``
      checks, so an empty body is ``invalid_client`` (401).
    * ``POST /revoke`` is RFC 7009 token revocation (:attr:`revocation_url`): a refresh
      token revokes its whole grant, so its access tokens stop validating and a refresh
      gets ``invalid_grant``; an access token revokes itself. Same client
      authentication and rate limit as ``/token``.
    * ``name_humans=False`` and ``include_scope=False`` answer as a plain RFC 6749 server:
      no ``human_id``, no ``scope`` (§5.1: it is the requested one).
      ``honour_login_hint=False`` ignores ``login_hint`` (queued or new humans approve).
    * Faults apply to ``/token`` only, in the order they were queued. Unless
      ``after_processing``, they stand in front of the service: no state change, no rate
      budget spent, no ``X-RateLimit-*`` headers.

    Secrets and tokens are never logged, printed or shown in a ``repr``.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        client_id: str,
        client_secret: str | Secret,
        redirect_uris: Sequence[str] | None = None,
        plan: Plan = "pro",
        requests_per_minute: int | None = None,
        expires_in: int = 3600,
        refresh_token_lifetime: float = 30 * 86400,
        rotate_refresh_tokens: bool = False,
        reuse_detection: bool = True,
        send_refresh_token_expires_in: bool = False,
        reuse_grace: float = 0.0,
        omit_refresh_token_when_not_rotating: bool = True,
        code_lifetime: float = 600.0,
        name_humans: bool = True,
        include_scope: bool = True,
        honour_login_hint: bool = True,
        grace_replays: int | None = 1,
    ) -> None:
        secret = client_secret if isinstance(client_secret, Secret) else Secret(client_secret)
        rate = plan_rate(plan)
        if isinstance(redirect_uris, str):
            raise TypeError("redirect_uris is a sequence of URIs, not one string")
        self._clock = clock
        #: busy while a request is answered: a :class:`~haasd.clock.ManualClock` settle hook
        #: (``clock.add_settle_hook(sim.activity.wait_idle)``) holds time until it is out
        self.activity = Activity()
        self.stats = SimulatorStats()
        self.requests_log: list[TokenRequestRecord] = []  #: every ``/token`` request, in order
        self._faults = FaultScript()
        self._authority = Authority(
            Settings(
                client_id=client_id,
                client_secret=secret,
                redirect_uris=None if redirect_uris is None else tuple(redirect_uris),
                requests_per_minute=rate if requests_per_minute is None else requests_per_minute,
                expires_in=expires_in,
                refresh_token_lifetime=refresh_token_lifetime,
                rotate_refresh_tokens=rotate_refresh_tokens,
                reuse_detection=reuse_detection,
                send_refresh_token_expires_in=send_refresh_token_expires_in,
                reuse_grace=reuse_grace,
                omit_refresh_token_when_not_rotating=omit_refresh_token_when_not_rotating,
                code_lifetime=code_lifetime,
                name_humans=name_humans,
                include_scope=include_scope,
                honour_login_hint=honour_login_hint,
                grace_replays=grace_replays,
            ),
            self.stats,
        )
        self._endpoints = Endpoints(
            self._authority, self._faults, clock, self.stats, self.requests_log
        )
        self._base_url: str | None = None
        self._browser: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        state = self._base_url or "not running"
        return f"<Simulator client_id={self._authority.settings.client_id!r} {state}>"

    # -- running ------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        """Listen on 127.0.0.1 (a free port) and serve until the block ends.

        Yields the base URL, e.g. ``"http://127.0.0.1:41234"``.
        """
        if self._base_url is not None:
            raise RuntimeError("the simulator is already running")
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        async with listener, anyio.create_task_group() as task_group:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio, not Django
            self._base_url = f"http://127.0.0.1:{port}"
            handler = partial(
                serve_connection, handler=self._endpoints.handle, activity=self.activity
            )
            task_group.start_soon(partial(listener.serve, handler, task_group=task_group))
            try:
                yield self._base_url
            finally:
                self._base_url = None
                task_group.cancel_scope.cancel()
                if self._browser is not None:
                    with anyio.CancelScope(shield=True):
                        await self._browser.aclose()
                    self._browser = None

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the simulator is not running; use `async with sim.running()`")
        return self._base_url

    @property
    def authorize_url(self) -> str:
        return f"{self.base_url}/authorize"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    @property
    def revocation_url(self) -> str:
        """The RFC 7009 revocation endpoint."""
        return f"{self.base_url}/revoke"

    @property
    def client_id(self) -> str:
        return self._authority.settings.client_id

    @property
    def requests_per_minute(self) -> int:
        return self._authority.settings.requests_per_minute

    # -- humans -------------------------------------------------------------------------

    @property
    def clock(self) -> Clock:
        """The clock every lifetime and limit of this server runs on."""
        return self._clock

    def add_human(self, human_id: str, decision: Decision = "approve") -> None:
        """Register a human (or change a known one's mind) for later visits."""
        self._authority.add_human(human_id, decision_of(decision))

    def set_decision(self, human_id: str, decision: Decision) -> None:
        """Change a known human's answer to future consent pages (KeyError if unknown)."""
        self._authority.set_decision(human_id, decision_of(decision))

    def queue_human(self, human_id: str, decision: Decision | None = None) -> None:
        """The next consent page visited without ``login_hint`` is read by ``human_id``.

        ``decision`` applies to that one visit; ``None`` means the human's own
        (``"approve"`` for a human not added before).
        """
        self._authority.queue_human(human_id, None if decision is None else decision_of(decision))

    def revoke(self, human_id: str) -> int:
        """The human withdraws consent: every grant and unused code is revoked.

        Returns how many grants were revoked.
        """
        return self._authority.revoke(human_id)

    async def visit(self, authorization_url: str) -> str | None:
        """Be the human's browser: open ``authorization_url``, return where it redirects.

        Returns the ``Location`` (``code`` + ``state``, or ``error=...``), or ``None`` when
        the human closes the page. An error page (unknown client, unregistered
        redirect URI) raises :class:`httpx.HTTPStatusError`.
        """
        async with self._client() as browser:
            response = await browser.get(authorization_url)
        if response.is_redirect:
            return response.headers["location"]
        response.raise_for_status()
        return None

    async def consent(
        self,
        human_id: str | None = None,
        scope: str = "status:read tasks:dispatch",
        *,
        redirect_uri: str | None = None,
    ) -> dict[str, Any]:
        """Run a whole consent (authorize with PKCE, then exchange the code) over HTTP.

        A shortcut for tests that need "a human who consented": returns the token
        response body. The ``/token`` request counts like any other (rate limit, faults).
        Raises :class:`SimulatorError` if the human does not approve.
        """
        redirect_uri = redirect_uri or next(
            iter(self._authority.settings.redirect_uris or ()), _DEFAULT_REDIRECT_URI
        )
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        state = secrets.token_urlsafe(16)
        query = {
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": scope,
            "state": state,
            "code_challenge": challenge.rstrip(b"=").decode(),
            "code_challenge_method": "S256",
        }
        if human_id is not None:
            query["login_hint"] = human_id
        location = await self.visit(f"{self.authorize_url}?{urlencode(query)}")
        if location is None:
            raise SimulatorError("the human closed the consent page")
        answer = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        if "code" not in answer or answer.get("state") != state:
            raise SimulatorError(f"consent refused: {answer.get('error', 'no code')}")
        body = {
            "grant_type": "authorization_code",
            "code": answer["code"],
            "redirect_uri": redirect_uri,
            "client_id": self.client_id,
            "client_secret": self._authority.settings.client_secret.reveal(),
            "code_verifier": verifier,
        }
        async with self._client() as client:
            response = await client.post(self.token_url, json=body)
        if response.status_code != 200:
            raise SimulatorError(f"code exchange failed with HTTP {response.status_code}")
        tokens: dict[str, Any] = response.json()
        return tokens

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        """One client while running (a new one costs tens of ms), else a temporary one."""
        if self._base_url is None:
            async with httpx.AsyncClient(trust_env=False, timeout=10.0) as client:
                yield client
            return
        if self._browser is None:
            self._browser = httpx.AsyncClient(trust_env=False, timeout=10.0)
        yield self._browser

    # -- faults -------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        body: FaultBody = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``n`` ``/token`` requests with ``status`` without processing them.

        ``body`` is JSON (a mapping), text or bytes; ``None`` gives a default: for 429 the
        HaaS docs' rate-limit body (``retry_after`` from a numeric ``Retry-After`` in
        ``headers``, else 1, with ``Retry-After: 1``); for 503 ``temporarily_unavailable``;
        otherwise ``server_error``. ``headers`` are sent as given (``Retry-After`` as an
        HTTP-date, ``X-RateLimit-*``, ...).
        """
        if not 200 <= status <= 599 or status in (204, 304):
            raise ValueError("status must be 200-599 and allow a body")
        self._faults.push(Fail(failure_reply(status, body, headers)), n)

    def flaky(self, probability: float, seed: int | None = 0) -> None:
        """Answer ``/token`` requests with a random 5xx with ``probability``, from now on.

        The status is one of 500, 502, 503, 504; the dice are seeded with ``seed``, so a
        run repeats. Scripted faults (``*_next``) go first; ``flaky(0)`` stops it.
        """
        self._faults.set_flaky(probability, seed)

    def latency(self, seconds: float) -> None:
        """Wait ``seconds`` of real time before handling each ``/token`` request.

        A client that gives up meanwhile does not stop the request: it is handled when
        the wait ends, as on a slow server. ``latency(0)`` stops it.
        """
        if seconds < 0:
            raise ValueError("latency must not be negative")
        self._faults.latency = seconds

    def drop_next(self, n: int = 1, after_processing: bool = False) -> None:
        """Close the connection of the next ``n`` ``/token`` requests without answering.

        ``after_processing=True`` handles the request first (the code is spent, the
        refresh token rotated) and loses the answer.
        """
        self._faults.push(Drop(after_processing), n)

    def malformed_next(
        self, n: int = 1, kind: MalformedKind = "html", after_processing: bool = False
    ) -> None:
        """Answer the next ``n`` ``/token`` requests with a malformed success of ``kind``:

        ``html`` (a sign-in page with 200), ``empty``, ``truncated_json``,
        ``missing_access_token``, ``bad_expires_in`` (a string), ``wrong_token_type``,
        ``odd_scope`` (a lone surrogate and a terminal escape in ``scope``),
        ``oversized`` (4 MiB), ``redirect`` (a 302 elsewhere). Without
        ``after_processing`` the tokens in it were never issued; with it, the request is
        handled and its real answer mangled (the new tokens are lost to the client).
        """
        if kind not in MALFORMED_KINDS:
            raise ValueError(f"unknown kind {kind!r}; one of {', '.join(MALFORMED_KINDS)}")
        self._faults.push(Malformed(kind, after_processing), n)

    def clear_faults(self) -> None:
        """Forget scripted faults, flakiness and latency."""
        self._faults.clear()

    @property
    def pending_faults(self) -> int:
        """Scripted faults not yet used."""
        return len(self._faults)

    # -- observation ----------------------------------------------------------------------

    def validate_access_token(self, token: str, at: float | None = None) -> str | None:
        """The human an access token speaks for if valid now (at ``at``); else None."""
        return self._authority.validate_access_token(token, at or self._clock.time())

    def access_token_expires_at(self, token: str) -> float | None:
        """When an access token this server issued ends (its own clock), or None."""
        return self._authority.access_token_expires_at(token)

    def has_active_grant(self, human_id: str) -> bool:
        """Whether ``human_id`` has a grant that is neither revoked nor past its limit."""
        return self._authority.has_active_grant(human_id, self._clock.time())

    def max_requests_in_window(self, seconds: float = 60.0) -> int:
        """The most ``/token`` requests logged within any ``seconds``-long span."""
        times = sorted(record.time for record in self.requests_log)
        return max(
            (bisect.bisect_left(times, t + seconds) - i for i, t in enumerate(times)), default=0
        )
