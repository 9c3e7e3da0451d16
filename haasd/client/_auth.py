"""``httpx.Auth`` for the HaaS API: a Bearer token from haasd on every request."""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator, Generator, Iterable

import httpx

from haasd.client._async import AsyncHaasdClient
from haasd.client._sync import HaasdClient

__all__ = ["HaasdAuth"]


class HaasdAuth(httpx.Auth):
    """Puts ``Authorization: Bearer <token>`` for ``human_id`` on each request, from
    haasd through a (caching) client; works with ``httpx.Client`` and
    ``httpx.AsyncClient``.

    On a 401 from the HaaS API the cached token is dropped, haasd is asked once for a
    token with at least the client's ``refresh_margin`` left, and the request is sent
    once more with it; a second 401 is returned as it is. (If haasd still holds the
    same token, the retry carries it again: only haasd decides when to refresh.)

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
    ) -> None:
        self.human_id = human_id
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

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        client = self.client
        token = client.token(self.human_id, scope=self.scope)
        request.headers["Authorization"] = token.authorization
        response = yield request
        if response.status_code == httpx.codes.UNAUTHORIZED:
            client.invalidate(self.human_id)
            token = client.token(self.human_id, min_ttl=client.refresh_margin, scope=self.scope)
            request.headers["Authorization"] = token.authorization
            yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        client = self.async_client
        token = await client.token(self.human_id, scope=self.scope)
        request.headers["Authorization"] = token.authorization
        response = yield request
        if response.status_code == httpx.codes.UNAUTHORIZED:
            await client.invalidate(self.human_id)
            token = await client.token(
                self.human_id, min_ttl=client.refresh_margin, scope=self.scope
            )
            request.headers["Authorization"] = token.authorization
            yield request
