"""The asynchronous client (anyio: asyncio or trio)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from types import TracebackType
from typing import Any

import anyio
import httpx

from haasd.client._cache import CacheKey, Flight, TokenCache, whole_seconds
from haasd.client._errors import HaasdClientError, error_from_response, error_from_transport
from haasd.client._model import (
    ConsentSettings,
    EventParser,
    FinishedConsent,
    Health,
    HumanStatus,
    StartedConsent,
    Token,
    scope_tuple,
)
from haasd.client._wire import (
    BASE_URL,
    CONSENT_CALLBACK,
    CONSENTS,
    EVENTS,
    HEALTH,
    HUMANS,
    callback_body,
    consent_timeout,
    default_socket,
    event_of,
    human_path,
    start_body,
    status_list,
    token_query,
    value_of,
)

__all__ = ["AsyncHaasdClient"]


class AsyncHaasdClient:
    """haasd over its Unix socket, for async code; tokens are cached (see :meth:`token`).

    ``socket_path`` defaults to ``$HAASD_SOCKET`` or ``/run/haasd/haasd.sock``;
    ``timeout`` bounds connecting and each answer; ``clock`` is the monotonic clock the
    cache judges expiry by. Use it as ``async with`` or call :meth:`aclose`.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        refresh_margin: float = 60.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.socket_path = os.fspath(socket_path) if socket_path else default_socket()
        self.timeout = timeout
        self._cache = TokenCache(refresh_margin)
        self._flights: dict[CacheKey, tuple[Flight, anyio.Lock]] = {}
        self._clock = clock
        transport = httpx.AsyncHTTPTransport(uds=self.socket_path)
        self._http = httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=timeout)

    @property
    def refresh_margin(self) -> float:
        return self._cache.refresh_margin

    async def __aenter__(self) -> AsyncHaasdClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- tokens ---------------------------------------------------------------------------

    async def token(
        self, human_id: str, *, min_ttl: float = 0, scope: str | Iterable[str] | None = None
    ) -> Token:
        """A token for ``human_id`` with more than ``min_ttl`` seconds left, whose grant
        holds ``scope`` (a list, or a space-separated string).

        Served from the cache, without a request, while the cached token has more than
        ``refresh_margin`` (and ``min_ttl``) left; concurrent callers for the same human
        and scopes share one request. Raises :class:`UnknownHuman`, :class:`Forbidden`,
        :class:`NeedsReconsent`, :class:`TokenUnavailable`, :class:`DaemonUnreachable`.
        """
        key = (human_id, scope_tuple(scope))
        ttl = whole_seconds(min_ttl)
        token = self._cache.get(key, ttl, self._clock())
        if token is not None:
            return token
        slot = self._flights.get(key)
        if slot is None:
            slot = self._flights[key] = (Flight(), anyio.Lock())
        flight, lock = slot
        ticket = flight.ticket()
        async with lock:
            token = self._cache.get(key, ttl, self._clock())
            if token is not None:
                return token
            shared = flight.shared_error(ticket, ttl)
            if shared is not None:
                raise shared
            flight.begin(ttl)
            asked_at = self._clock()
            try:
                token = await self._fetch(key, ttl)
            except HaasdClientError as exc:
                flight.end(exc)
                raise
            except BaseException:
                flight.end(None)
                raise
            flight.end(None)
            self._cache.put(key, token, asked_at)
            return token

    async def _fetch(self, key: CacheKey, min_ttl: int) -> Token:
        human_id, scope = key
        path = human_path("/v1/tokens", human_id)
        response = await self._request("GET", path, params=token_query(min_ttl, scope))
        return value_of(response, Token.from_json)

    async def invalidate(self, human_id: str) -> None:
        """Forget the cached tokens of ``human_id``: the next :meth:`token` asks haasd."""
        self._cache.invalidate(human_id)

    # --- humans and health ----------------------------------------------------------------

    async def status(self, human_id: str) -> HumanStatus:
        response = await self._request("GET", human_path(HUMANS, human_id))
        return value_of(response, HumanStatus.from_json)

    async def humans(self) -> list[HumanStatus]:
        """Every grant's status (needs an admin rule)."""
        response = await self._request("GET", HUMANS)
        return value_of(response, status_list)

    async def health(self) -> Health:
        return value_of(await self._request("GET", HEALTH), Health.from_json)

    async def refresh(self, human_id: str) -> HumanStatus:
        """Refresh now (admin); the status after it. A failure raises with
        ``error_type`` ``refresh_failed`` and ``details["last_error"]``."""
        self._cache.invalidate(human_id)
        response = await self._request("POST", human_path(HUMANS, human_id, "/refresh"))
        return value_of(response, HumanStatus.from_json)

    async def delete(self, human_id: str) -> None:
        """Erase the grant from haasd's store (admin)."""
        self._cache.invalidate(human_id)
        response = await self._request("DELETE", human_path(HUMANS, human_id))
        if response.is_error:
            raise error_from_response(response)

    # --- consents (admin) -----------------------------------------------------------------

    async def consent_settings(self) -> ConsentSettings:
        """How haasd takes consents: its redirect URI (loopback or not), the pending TTL."""
        return value_of(await self._request("GET", CONSENTS), ConsentSettings.from_json)

    async def start_consent(
        self,
        scopes: str | Iterable[str] | None = None,
        human_id: str | None = None,
        *,
        redirect_uri: str | None = None,
    ) -> StartedConsent:
        """Start a consent (admin): send the human to the answer's ``authorization_url``.

        ``scopes`` (default: the configured ones, or ``human_id``'s grant's) may narrow
        the configured scopes, never widen them; ``human_id`` asks that human (a
        re-consent); ``redirect_uri`` is the configured loopback redirect URI on another
        port (see :func:`~haasd.client.listen_for_consent`). Errors carry their
        ``error_type``: ``invalid_scope`` (``*`` too), ``scope_not_allowed``,
        ``invalid_request``, ``consent_limit`` (503, ``retry_after``).
        """
        body = start_body(scopes, human_id, redirect_uri)
        timeout = consent_timeout(self.timeout)
        response = await self._request("POST", CONSENTS, json=body, seconds=timeout)
        return value_of(response, StartedConsent.from_json)

    async def finish_consent(
        self,
        *,
        callback_url: str | None = None,
        state: str | None = None,
        code: str | None = None,
        error: str | None = None,
        error_description: str | None = None,
    ) -> FinishedConsent:
        """Finish a consent (admin) from the URL the browser was redirected to, or from
        its ``state`` and ``code`` (or ``error``); haasd exchanges the code and stores
        the grant.

        Raises :class:`ConsentDenied`, :class:`InvalidConsentState` (nothing exchanged),
        or a :class:`HaasdClientError` with ``error_type`` ``exchange_failed`` (502: the
        server refused the code) or ``exchange_unavailable`` (503: send the same callback
        again after ``retry_after``); ValueError for a combination of arguments haasd
        would refuse.
        """
        body = callback_body(callback_url, state, code, error, error_description)
        timeout = consent_timeout(self.timeout)
        response = await self._request("POST", CONSENT_CALLBACK, json=body, seconds=timeout)
        finished = value_of(response, FinishedConsent.from_json)
        self._cache.invalidate(finished.human_id)
        return finished

    async def events(self) -> AsyncGenerator[dict[str, Any], None]:
        """Lifecycle events as they happen, each a dict with ``type``, ``human_id``,
        ``at``; ends when haasd closes the stream. Close it early with
        ``contextlib.aclosing``."""
        timeout = httpx.Timeout(self.timeout, read=None)  # the stream may stay quiet
        request = self._http.build_request("GET", EVENTS, timeout=timeout)
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise error_from_transport(self.socket_path, exc, self.timeout) from exc
        try:
            if response.is_error:
                await response.aread()
                raise error_from_response(response)
            parser = EventParser()
            lines = response.aiter_lines()
            while True:
                try:
                    line = await anext(lines)
                except StopAsyncIteration:
                    return
                except httpx.TransportError as exc:
                    raise error_from_transport(self.socket_path, exc, self.timeout) from exc
                event = event_of(parser, line, EVENTS)
                if event is not None:
                    yield event
        finally:
            await response.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        *,
        json: Any = None,
        seconds: float | None = None,
    ) -> httpx.Response:
        wait = httpx.USE_CLIENT_DEFAULT if seconds is None else seconds
        try:
            return await self._http.request(method, path, params=params, json=json, timeout=wait)
        except httpx.TransportError as exc:
            raise error_from_transport(self.socket_path, exc, self.timeout) from exc
