"""``httpx.Auth`` for the HaaS API: a Bearer token from haasd on every request to it."""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator, Generator, Iterable
from typing import Final

import httpx

from haasd.client._async import AsyncHaasdClient
from haasd.client._sync import HaasdClient

__all__ = ["HAAS_API_ORIGIN", "HaasdAuth", "origin_of"]

#: where the HaaS API answers (its docs: ``https://api.api4human.com/v1/...``)
HAAS_API_ORIGIN: Final = "https://api.api4human.com"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


def origin_of(url: httpx.URL | str) -> Origin:
    """``(scheme, host, port)`` of ``url``, the port made explicit: ``https://h`` and
    ``https://h:443`` are one origin, ``http://h`` is another (RFC 6454)."""
    url = httpx.URL(url)
    scheme = url.scheme.lower()
    port = url.port if url.port is not None else _DEFAULT_PORTS.get(scheme, -1)
    return scheme, url.host.lower(), port


def _allowed(origins: str | Iterable[str]) -> frozenset[Origin]:
    given = (origins,) if isinstance(origins, str) else tuple(origins)
    allowed = set()
    for text in given:
        try:
            url = httpx.URL(text)
        except httpx.InvalidURL as exc:
            raise ValueError(f"not an origin: {text!r} ({exc})") from None
        if url.scheme not in _DEFAULT_PORTS or not url.host or url.path not in {"", "/"}:
            raise ValueError(
                f"expected an origin such as {HAAS_API_ORIGIN!r} (scheme, host and an "
                f"optional port; no path), not {text!r}"
            )
        if url.query or url.fragment or url.userinfo:
            raise ValueError(f"an origin has no query, fragment or user: {text!r}")
        allowed.add(origin_of(url))
    if not allowed:
        raise ValueError("HaasdAuth needs at least one origin to send tokens to")
    return frozenset(allowed)


class HaasdAuth(httpx.Auth):
    """Puts ``Authorization: Bearer <token>`` for ``human_id`` on each request, from
    haasd through a (caching) client; works with ``httpx.Client`` and
    ``httpx.AsyncClient``.

    On a 401 from the HaaS API the cached token is dropped, haasd is asked once for a
    token with at least the client's ``refresh_margin`` left, and the request is sent
    once more with it; a second 401 is returned as it is. (If haasd still holds the
    same token, the retry carries it again: only haasd decides when to refresh.)

    The token goes only to ``origins``: by default the HaaS API's,
    ``https://api.api4human.com``. Pass ``origins=("https://haas.example:8443",)`` for
    another (each a scheme, host and optional port; the default port of the scheme is
    the same origin, ``http://`` a different one). A request to any other origin goes
    out as it is: no Authorization header is added and haasd is not asked for a token,
    so one ``httpx.Client`` can also talk to other services without leaking it. httpx
    itself drops the header when a redirect leaves the origin, and a 401 from another
    origin is never retried with a newer token.

    Pass the ``client`` and/or ``async_client`` you close yourself; one that is missing
    is made on first use, on the other's socket (or the default one).
    """

    requires_request_body = True  # a request retried after a 401 must be sent again whole

    def __init__(
        self,
        human_id: str,
        *,
        client: HaasdClient | None = None,
        async_client: AsyncHaasdClient | None = None,
        scope: str | Iterable[str] | None = None,
        origins: str | Iterable[str] = (HAAS_API_ORIGIN,),
    ) -> None:
        self.human_id = human_id
        self.origins = _allowed(origins)
        self.scope = scope if scope is None or isinstance(scope, str) else tuple(scope)
        self._client = client
        self._async_client = async_client
        self._making = threading.Lock()  # one missing client made, whatever the threads

    def _socket(self) -> str | None:
        for other in (self._client, self._async_client):
            if other is not None:
                return other.socket_path
        return None

    @property
    def client(self) -> HaasdClient:
        if self._client is None:
            with self._making:
                if self._client is None:
                    self._client = HaasdClient(self._socket())
        return self._client

    @property
    def async_client(self) -> AsyncHaasdClient:
        if self._async_client is None:
            with self._making:
                if self._async_client is None:
                    self._async_client = AsyncHaasdClient(self._socket())
        return self._async_client

    def sends_token_to(self, url: httpx.URL | str) -> bool:
        """Whether a request to ``url`` gets the token (its origin is one of ``origins``)."""
        return origin_of(url) in self.origins

    def _retry(self, response: httpx.Response) -> bool:
        """A 401 from the HaaS API itself (not from where a redirect led) is retried."""
        unauthorized = response.status_code == httpx.codes.UNAUTHORIZED
        return unauthorized and self.sends_token_to(response.request.url)

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        if not self.sends_token_to(request.url):
            yield request
            return
        client = self.client
        token = client.token(self.human_id, scope=self.scope)
        request.headers["Authorization"] = token.authorization
        response = yield request
        if self._retry(response):
            client.invalidate(self.human_id)
            token = client.token(self.human_id, min_ttl=client.refresh_margin, scope=self.scope)
            request.headers["Authorization"] = token.authorization
            yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if not self.sends_token_to(request.url):
            yield request
            return
        client = self.async_client
        token = await client.token(self.human_id, scope=self.scope)
        request.headers["Authorization"] = token.authorization
        response = yield request
        if self._retry(response):
            await client.invalidate(self.human_id)
            token = await client.token(
                self.human_id, min_ttl=client.refresh_margin, scope=self.scope
            )
            request.headers["Authorization"] = token.authorization
            yield request
