"""Catch a consent's one loopback redirect (RFC 8252 §7.3): the listener's HTTP side.

What ``haasd consent listen`` runs, through :func:`haasd.client.listen_for_consent` (which
has the daemon finish the consent). A minimal HTTP/1.1 server (anyio + h11) on a loopback
address only; each connection gets one request and one answer (``Connection: close``).
Finishing is the caller's: :meth:`RedirectListener.catch` hands the redirect's URL to its
``finish`` and shows the browser a small page either way.

* A request for another path is answered 404 and the listener keeps waiting.
* ``finish``'s result is answered 200; the listener stops and returns it.
* ``finish``'s error is answered with the page the caller's ``page_for`` gives it. A 400
  (not this consent's redirect: a stale tab or a stray page must not end it) or a 503
  (not now: the consent was kept, and reloading the page retries) leaves the listener
  waiting; any other page stops it and the error is raised.
* Leaving :func:`listen_on_loopback`'s block closes the port.
"""

from __future__ import annotations

import html
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Final, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.abc
import h11

from haasd.errors import ConsentError, HaasdError, ListenTimeoutError
from haasd.loopback import loopback_port, with_port

__all__ = ["WAITING", "Granted", "Page", "RedirectListener", "listen_on_loopback"]

#: real seconds a connection may take to send its request
READ_TIMEOUT: Final = 10.0
WRITE_TIMEOUT: Final = 10.0
#: the statuses of the pages after which the listener keeps waiting (see the module's doc)
WAITING: Final = frozenset({400, 503})
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

#: what the browser is shown: HTTP status, title, message
Page = tuple[int, str, str]


class Granted(Protocol):
    """What a finished consent tells the browser: who consented, to what."""

    @property
    def human_id(self) -> str: ...

    @property
    def scope(self) -> Sequence[str]: ...


G = TypeVar("G", bound=Granted)


@asynccontextmanager
async def listen_on_loopback(
    redirect_uri: str, port: int | None = None, *, host: str | None = None
) -> AsyncIterator[RedirectListener]:
    """Listen for the redirects to ``redirect_uri``, a loopback http URI; close on leaving.

    ConsentRequestError for a redirect URI that is not a loopback one (nothing else could
    reach us), ConsentError when the port cannot be had. ``port`` None listens on the
    redirect URI's own port (for a server that compares redirect URIs exactly); 0 takes a
    free port (RFC 8252 §7.3 asks servers to accept any port on a loopback redirect).
    ``host`` None listens on the redirect URI's address (``localhost`` as 127.0.0.1), else
    on ``host``, which must be a loopback address (ValueError). The listener's
    ``redirect_uri`` is ``redirect_uri`` on the bound port: start the consent with it.
    """
    configured_port = loopback_port(redirect_uri)  # ConsentRequestError: not a loopback URI
    host = _bind_host(redirect_uri) if host is None else _loopback_address(host)
    wanted = configured_port if port is None else port
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=wanted)
    except OSError as exc:
        raise ConsentError(f"cannot listen on {host}:{wanted}: {exc.strerror or exc}") from exc
    async with listener:
        bound = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio
        on_port = redirect_uri if bound == configured_port else with_port(redirect_uri, bound)
        yield RedirectListener(listener, on_port)


class RedirectListener:
    """A listening loopback port (from :func:`listen_on_loopback`) for one redirect."""

    def __init__(
        self, listener: anyio.abc.Listener[anyio.abc.SocketStream], redirect_uri: str
    ) -> None:
        self._listener = listener
        #: the redirect URI on the bound port
        self.redirect_uri = redirect_uri

    async def catch(
        self,
        finish: Callable[[str], Awaitable[G]],
        page_for: Callable[[HaasdError], Page],
        *,
        seconds: float,
        late: str | None = None,
    ) -> G:
        """Answer requests until ``finish(callback_url)`` ends the wait; return or raise.

        ``page_for`` maps an error of ``finish`` to the browser's page, and decides by its
        status whether the listener waits on (:data:`WAITING`). After ``seconds`` real
        seconds: ListenTimeoutError, "no redirect reached <the URI> <late>; the port is
        closed" (``late`` by default "within <seconds>s").
        """
        catcher = _Catcher(self.redirect_uri, finish, page_for)
        try:
            with anyio.fail_after(seconds):
                async with anyio.create_task_group() as tg:
                    catcher.done = tg.cancel_scope
                    await self._listener.serve(catcher.handle, task_group=tg)
        except TimeoutError:
            late = f"within {seconds:g}s" if late is None else late
            raise ListenTimeoutError(
                f"no redirect reached {self.redirect_uri} {late}; the port is closed"
            ) from None
        return catcher.outcome()


def _bind_host(redirect_uri: str) -> str:
    """The address to listen on: the redirect URI's host, ``localhost`` as 127.0.0.1."""
    host = urlsplit(redirect_uri).hostname or ""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return "127.0.0.1"


def _loopback_address(host: str) -> str:
    address = ipaddress.ip_address(host)  # ValueError for a name: bind to an address
    if not address.is_loopback:
        raise ValueError(f"the consent listener binds to a loopback address only, not {host}")
    return host


class _Catcher(Generic[G]):
    """Answers each connection; keeps the first final outcome and stops the listener."""

    def __init__(
        self,
        redirect_uri: str,
        finish: Callable[[str], Awaitable[G]],
        page_for: Callable[[HaasdError], Page],
    ) -> None:
        parts = urlsplit(redirect_uri)
        self._finish = finish
        self._page_for = page_for
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._path = parts.path or "/"
        self._result: G | None = None
        self._error: HaasdError | None = None
        self.done: anyio.CancelScope | None = None

    def outcome(self) -> G:
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

    async def _answer(self, target: str) -> Page:
        if target.partition("?")[0] != self._path:
            return 404, "Not found", "This is haasd's consent listener; nothing else is here."
        try:
            result = await self._finish(self._origin + target)
        except HaasdError as exc:
            page = self._page_for(exc)
            if page[0] not in WAITING:
                self._error = exc
            return page
        self._result = result
        message = f"haasd now holds the consent of {result.human_id} ({', '.join(result.scope)})."
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
