"""The synchronous client; safe to share between threads."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator, Iterable
from types import TracebackType
from typing import Any

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

__all__ = ["HaasdClient"]


class HaasdClient:
    """haasd over its Unix socket, blocking; the API of :class:`AsyncHaasdClient`.

    One instance may serve many threads: the cache is locked, and threads asking for
    the same human and scopes at once share one request. Use it as ``with`` or call
    :meth:`close`.
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
        self._flights: dict[CacheKey, tuple[Flight, threading.Lock]] = {}
        self._lock = threading.Lock()  # guards _cache and _flights
        self._clock = clock
        transport = httpx.HTTPTransport(uds=self.socket_path)
        self._http = httpx.Client(transport=transport, base_url=BASE_URL, timeout=timeout)

    @property
    def refresh_margin(self) -> float:
        return self._cache.refresh_margin

    def __enter__(self) -> HaasdClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- tokens ---------------------------------------------------------------------------

    def token(
        self, human_id: str, *, min_ttl: float = 0, scope: str | Iterable[str] | None = None
    ) -> Token:
        """See :meth:`AsyncHaasdClient.token`."""
        key = (human_id, scope_tuple(scope))
        ttl = whole_seconds(min_ttl)
        with self._lock:
            token = self._cache.get(key, ttl, self._clock())
            if token is not None:
                return token
            slot = self._flights.get(key)
            if slot is None:
                slot = self._flights[key] = (Flight(), threading.Lock())
            flight, flight_lock = slot
            ticket = flight.ticket()
        with flight_lock:
            with self._lock:
                token = self._cache.get(key, ttl, self._clock())
            if token is not None:
                return token
            shared = flight.shared_error(ticket, ttl)
            if shared is not None:
                raise shared
            flight.begin(ttl)
            asked_at = self._clock()
            try:
                token = self._fetch(key, ttl)
            except HaasdClientError as exc:
                flight.end(exc)
                raise
            except BaseException:
                flight.end(None)
                raise
            flight.end(None)
            with self._lock:
                self._cache.put(key, token, asked_at)
            return token

    def _fetch(self, key: CacheKey, min_ttl: int) -> Token:
        human_id, scope = key
        path = human_path("/v1/tokens", human_id)
        response = self._request("GET", path, params=token_query(min_ttl, scope))
        return value_of(response, Token.from_json)

    def invalidate(self, human_id: str) -> None:
        """Forget the cached tokens of ``human_id``: the next :meth:`token` asks haasd."""
        with self._lock:
            self._cache.invalidate(human_id)

    # --- humans and health ----------------------------------------------------------------

    def status(self, human_id: str) -> HumanStatus:
        response = self._request("GET", human_path(HUMANS, human_id))
        return value_of(response, HumanStatus.from_json)

    def humans(self) -> list[HumanStatus]:
        """Every grant's status (needs an admin rule)."""
        return value_of(self._request("GET", HUMANS), status_list)

    def health(self) -> Health:
        return value_of(self._request("GET", HEALTH), Health.from_json)

    def refresh(self, human_id: str) -> HumanStatus:
        """See :meth:`AsyncHaasdClient.refresh`."""
        self.invalidate(human_id)
        response = self._request("POST", human_path(HUMANS, human_id, "/refresh"))
        return value_of(response, HumanStatus.from_json)

    def delete(self, human_id: str) -> None:
        """Erase the grant from haasd's store (admin)."""
        self.invalidate(human_id)
        response = self._request("DELETE", human_path(HUMANS, human_id))
        if response.is_error:
            raise error_from_response(response)

    # --- consents (admin) -----------------------------------------------------------------

    def consent_settings(self) -> ConsentSettings:
        """See :meth:`AsyncHaasdClient.consent_settings`."""
        return value_of(self._request("GET", CONSENTS), ConsentSettings.from_json)

    def start_consent(
        self,
        scopes: str | Iterable[str] | None = None,
        human_id: str | None = None,
        *,
        redirect_uri: str | None = None,
    ) -> StartedConsent:
        """See :meth:`AsyncHaasdClient.start_consent`."""
        body = start_body(scopes, human_id, redirect_uri)
        response = self._request("POST", CONSENTS, json=body, seconds=self._consent_timeout)
        return value_of(response, StartedConsent.from_json)

    def finish_consent(
        self,
        *,
        callback_url: str | None = None,
        state: str | None = None,
        code: str | None = None,
        error: str | None = None,
        error_description: str | None = None,
    ) -> FinishedConsent:
        """See :meth:`AsyncHaasdClient.finish_consent`."""
        body = callback_body(callback_url, state, code, error, error_description)
        timeout = self._consent_timeout
        response = self._request("POST", CONSENT_CALLBACK, json=body, seconds=timeout)
        finished = value_of(response, FinishedConsent.from_json)
        self.invalidate(finished.human_id)
        return finished

    @property
    def _consent_timeout(self) -> float:
        return consent_timeout(self.timeout)

    def events(self) -> Generator[dict[str, Any], None, None]:
        """See :meth:`AsyncHaasdClient.events`; close it early with ``contextlib.closing``."""
        timeout = httpx.Timeout(self.timeout, read=None)
        request = self._http.build_request("GET", EVENTS, timeout=timeout)
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise error_from_transport(self.socket_path, exc, self.timeout) from exc
        try:
            if response.is_error:
                response.read()
                raise error_from_response(response)
            parser = EventParser()
            lines = response.iter_lines()
            while True:
                try:
                    line = next(lines)
                except StopIteration:
                    return
                except httpx.TransportError as exc:
                    raise error_from_transport(self.socket_path, exc, self.timeout) from exc
                event = event_of(parser, line, EVENTS)
                if event is not None:
                    yield event
        finally:
            response.close()

    def _request(
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
            return self._http.request(method, path, params=params, json=json, timeout=wait)
        except httpx.TransportError as exc:
            raise error_from_transport(self.socket_path, exc, self.timeout) from exc
