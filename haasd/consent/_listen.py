"""``haasd consent listen``: catch the one loopback redirect (RFC 8252 §7.3).

A minimal HTTP/1.1 server (anyio + h11) on a loopback address only. Each connection gets
one request and one answer (``Connection: close``). The redirect to the ``redirect_uri``
path finishes the consent; the browser is shown a small page either way.

* A callback whose state is unknown, or that is not for our redirect URI, is answered
  400 and the listener keeps waiting: a stale tab or a stray page must not end it.
* A transient exchange failure is answered 503 ("reload this page") and the listener
  keeps waiting: the consent was kept, and reloading retries the exchange.
* Anything else — granted, denied, refused — answers the browser, closes the port and
  returns the result (or raises the error).
"""

from __future__ import annotations

import html
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import urlsplit

import anyio
import anyio.abc
import h11

from haasd.consent._flow import ConsentFlow, ConsentResult
from haasd.consent._oauth import loopback_port, with_port
from haasd.errors import (
    ConsentDeniedError,
    ConsentError,
    ConsentRequestError,
    ExchangeUnavailableError,
    HaasdError,
    InvalidStateError,
    ListenTimeoutError,
)

__all__ = ["listen_once"]

#: real seconds a connection may take to send its request
READ_TIMEOUT: Final = 10.0
WRITE_TIMEOUT: Final = 10.0
_MAX_HEAD: Final = 16 * 1024
_GONE: Final = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)
_HEADERS: Final = (
    (b"Content-Type", b"text/html; charset=utf-8"),
    (b"Cache-Control", b"no-store"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"Content-Security-Policy", b"default-src 'none'"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Connection", b"close"),
)

Ready = Callable[[str], Awaitable[object]]


async def listen_once(
    flow: ConsentFlow,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    # the listener's own deadline, counted from after ``ready``: it closes the port and
    # raises ListenTimeoutError, which a caller's fail_after around the call could not
    timeout: float,  # noqa: ASYNC109
    ready: Ready | None = None,
) -> ConsentResult:
    """Listen on ``host`` (a loopback address) for the consent's redirect; finish it.

    ``port`` None listens on the configured redirect URI's port (for a server that
    compares redirect URIs exactly); 0 takes a free port (RFC 8252 §7.3 asks servers to
    accept any port on a loopback redirect). Once listening, ``ready(redirect_uri)`` is
    awaited with the redirect URI on the bound port: start the consent there, with
    ``flow.start(..., redirect_uri=redirect_uri)``, and show the human its URL. Then the
    listener waits ``timeout`` real seconds for the redirect (ListenTimeoutError).
    """
    address = ipaddress.ip_address(host)  # ValueError for a name: bind to an address
    if not address.is_loopback:
        raise ValueError(f"the consent listener binds to a loopback address only, not {host}")
    configured = flow.redirect_uri
    configured_port = loopback_port(configured)  # only a loopback redirect can reach us
    wanted = configured_port if port is None else port
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=wanted)
    except OSError as exc:
        raise ConsentError(f"cannot listen on {host}:{wanted}: {exc.strerror or exc}") from exc
    async with listener:
        bound = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio
        redirect_uri = configured if bound == configured_port else with_port(configured, bound)
        if ready is not None:
            await ready(redirect_uri)
        catcher = _Catcher(flow, redirect_uri)
        try:
            with anyio.fail_after(timeout):
                async with anyio.create_task_group() as tg:
                    catcher.done = tg.cancel_scope
                    await listener.serve(catcher.handle, task_group=tg)
        except TimeoutError:
            raise ListenTimeoutError(
                f"no redirect reached {redirect_uri} within {timeout:g}s; the port is closed"
            ) from None
    return catcher.outcome()


class _Catcher:
    """Answers each connection; keeps the first final outcome and stops the listener."""

    def __init__(self, flow: ConsentFlow, redirect_uri: str) -> None:
        parts = urlsplit(redirect_uri)
        self._flow = flow
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._path = parts.path or "/"
        self._result: ConsentResult | None = None
        self._error: HaasdError | None = None
        self.done: anyio.CancelScope | None = None

    def outcome(self) -> ConsentResult:
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
            result = await self._flow.finish_url(self._origin + target)
        except (InvalidStateError, ConsentRequestError) as exc:
            return 400, "Not this consent", f"{exc}. This window can be closed."
        except ExchangeUnavailableError:
            return 503, "Try again", "haasd could not reach the HaaS server. Reload this page."
        except ConsentDeniedError as exc:
            self._error = exc
            return 403, "Consent not given", f"{exc}. You can close this tab."
        except HaasdError as exc:  # the exchange was refused, the store failed, ...
            self._error = exc
            return 502, "Consent not completed", f"{exc}. You can close this tab."
        self._result = result
        scopes = ", ".join(result.scope)
        message = f"haasd now holds the consent of {result.human_id} ({scopes})."
        return 200, "Consent recorded", f"{message} You can close this tab."


async def _read_target(conn: h11.Connection, stream: anyio.abc.SocketStream) -> str | None:
    """The request target of a GET, or None (not a GET, malformed, or too slow)."""
    target: str | None = None
    with anyio.move_on_after(READ_TIMEOUT):
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return None
            if event is h11.NEED_DATA:
                try:
                    conn.receive_data(await stream.receive(4096))
                except _GONE:
                    conn.receive_data(b"")
            elif isinstance(event, h11.Request):
                if event.method != b"GET":
                    return None
                target = event.target.decode("ascii", "replace")
            elif isinstance(event, h11.EndOfMessage):
                return target
            elif not isinstance(event, h11.Data):  # ConnectionClosed, PAUSED
                return None
    return None


async def _respond(
    conn: h11.Connection, stream: anyio.abc.SocketStream, status: int, title: str, message: str
) -> None:
    body = (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>\n<body><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(message)}</p></body></html>\n"
    ).encode()
    headers = [*_HEADERS, (b"Content-Length", str(len(body)).encode())]
    data = conn.send(h11.Response(status_code=status, headers=headers))
    data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
    data += conn.send(h11.EndOfMessage()) or b""
    with anyio.move_on_after(WRITE_TIMEOUT):
        try:
            await stream.send(data)
        except _GONE:
            pass
