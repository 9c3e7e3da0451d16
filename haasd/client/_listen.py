"""Catch a consent's one loopback redirect and have haasd finish it (RFC 8252 §7.3).

What ``haasd consent listen`` runs. It goes through the daemon, like every consent: the
daemon holds the store, the client secret and the token endpoint, and this needs only an
admin rule on its socket. It asks haasd for the configured redirect URI
(``GET /v1/consents``), listens on that loopback address (the configured port, or any
free one), starts the consent with the redirect URI on the bound port
(``POST /v1/consents``), waits for the browser's redirect, hands its URL to haasd
(``POST /v1/consents/callback``), shows the browser the outcome and closes the port.

The browser's requests are answered as :func:`haasd.consent.listen_once` answers them
(the same small HTTP/1.1 server): a callback haasd refuses as not this consent's (400)
or cannot finish for now (503: "reload this page") leaves the listener waiting; a grant,
a refusal or a failed exchange ends it.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import anyio
import anyio.abc
import h11

from haasd.client._async import AsyncHaasdClient
from haasd.client._errors import ConsentDenied, DaemonUnreachable, HaasdClientError
from haasd.client._model import FinishedConsent, StartedConsent
from haasd.clock import rfc3339
from haasd.consent._listen import _read_target, _respond
from haasd.consent._oauth import loopback_port, with_port
from haasd.errors import ConsentError, HaasdError, ListenTimeoutError

__all__ = ["listen_for_consent"]

_MAX_HEAD = 16 * 1024

Ready = Callable[[StartedConsent], Awaitable[object]]


async def listen_for_consent(
    client: AsyncHaasdClient,
    scopes: str | Iterable[str] | None = None,
    human_id: str | None = None,
    *,
    port: int | None = None,
    seconds: float | None = None,
    ready: Ready | None = None,
) -> FinishedConsent:
    """Start a consent whose redirect comes to a loopback port here; finish it via haasd.

    ``port`` None listens on the configured redirect URI's port (for a server that
    compares redirect URIs exactly); 0 takes a free port. ``ready(started)`` is awaited
    once the consent is started: show the human ``started.authorization_url``. The
    listener then waits ``seconds`` (default: until the consent expires) for the
    redirect, else raises ListenTimeoutError. Raises ConsentError when haasd's redirect
    URI is not a loopback one or the port cannot be had, and the client's errors
    (:class:`ConsentDenied`, ``exchange_failed``, ...) after showing them to the browser.
    """
    configured = (await client.consent_settings()).redirect_uri
    configured_port = loopback_port(configured)  # ConsentRequestError: not a loopback URI
    host = _bind_host(configured)
    wanted = configured_port if port is None else port
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=wanted)
    except OSError as exc:
        raise ConsentError(f"cannot listen on {host}:{wanted}: {exc.strerror or exc}") from exc
    async with listener:
        bound = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio
        redirect_uri = configured if bound == configured_port else with_port(configured, bound)
        started = await client.start_consent(scopes, human_id, redirect_uri=redirect_uri)
        if ready is not None:
            await ready(started)
        wait = started.expires_at - time.time() if seconds is None else seconds
        catcher = _Catcher(client, redirect_uri)
        try:
            with anyio.fail_after(max(wait, 0.0)):
                async with anyio.create_task_group() as tg:
                    catcher.done = tg.cancel_scope
                    await listener.serve(catcher.handle, task_group=tg)
        except TimeoutError:
            raise ListenTimeoutError(
                f"no redirect reached {redirect_uri} in time (the consent expires at "
                f"{rfc3339(started.expires_at)}); the port is closed"
            ) from None
    return catcher.outcome()


def _bind_host(redirect_uri: str) -> str:
    """The address to listen on: the redirect URI's host, ``localhost`` as 127.0.0.1."""
    host = urlsplit(redirect_uri).hostname or ""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return "127.0.0.1"


class _Catcher:
    """Answers each connection; keeps the first final outcome and stops the listener."""

    def __init__(self, client: AsyncHaasdClient, redirect_uri: str) -> None:
        parts = urlsplit(redirect_uri)
        self._client = client
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._path = parts.path or "/"
        self._result: FinishedConsent | None = None
        self._error: HaasdError | None = None
        self.done: anyio.CancelScope | None = None

    def outcome(self) -> FinishedConsent:
        if self._error is not None:
            raise self._error
        if self._result is None:  # pragma: no cover - serve() only ends by our cancel
            raise ConsentError("the listener stopped without an answer")
        return self._result

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
            target = await _read_target(conn, stream)
            if target is None or self._final():
                return
            status, title, message = await self._answer(target)
            await _respond(conn, stream, status, title, message)
            if self._final() and self.done is not None:
                self.done.cancel()

    def _final(self) -> bool:
        return self._result is not None or self._error is not None

    async def _answer(self, target: str) -> tuple[int, str, str]:
        if target.partition("?")[0] != self._path:
            return 404, "Not found", "This is haasd's consent listener; nothing else is here."
        try:
            result = await self._client.finish_consent(callback_url=self._origin + target)
        except DaemonUnreachable:
            return 503, "Try again", "haasd cannot be reached right now. Reload this page."
        except ConsentDenied as exc:
            self._error = exc
            return 403, "Consent not given", f"{exc}. You can close this tab."
        except HaasdClientError as exc:
            if exc.status == 400:  # not this consent's redirect, or a used/expired state
                return 400, "Not this consent", f"{exc}. This window can be closed."
            if exc.status == 503:  # the exchange failed for now; the consent was kept
                return 503, "Try again", "haasd could not reach the HaaS server. Reload this page."
            self._error = exc
            return 502, "Consent not completed", f"{exc}. You can close this tab."
        self._result = result
        message = f"haasd now holds the consent of {result.human_id} ({', '.join(result.scope)})."
        return 200, "Consent recorded", f"{message} You can close this tab."
