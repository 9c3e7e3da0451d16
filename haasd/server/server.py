"""The token server: accept, identify the peer, admit by rule and within limits, serve,
stop cleanly.

Each connection's peer is read once, at accept, with ``SO_PEERCRED`` (pid, uid, gid — the
kernel's word, not the client's). Admission, in order:

* a peer that matches no ``[[access]]`` rule is answered 403 ``forbidden`` and closed at
  once: it never holds a connection slot, so peers without rights cannot fill the server;
* of ``Limits.max_connections``, the last ``Limits.admin_reserve`` are for peers with an
  admin rule only, so apps filling the server never lock an operator out;
* beyond those, or beyond ``Limits.max_connections_per_uid`` for one uid, it is 503
  ``too_many_connections``.

Refusals are written by at most ``_MAX_REFUSING`` tasks at once (beyond that the
connection is just closed), and their log lines are counted per peer
(:mod:`haasd.server.tally`). A reload that leaves a peer without any rule closes its
connections (an event stream included) once their answer in flight is out.

Stopping (cancelling :meth:`TokenServer.serve`) stops accepting at once; idle
connections are closed, and a request being answered gets ``Limits.shutdown_grace``
seconds to finish: connections run in a task group of their own, shielded from the
cancellation that stops the accept loop.
"""

from __future__ import annotations

import os
import re
import socket
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final

import anyio
import anyio.abc
import structlog
from anyio.abc import TaskGroup, TaskStatus
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from haasd.clock import Clock, SystemClock
from haasd.config import AccessRule
from haasd.server.access import Peer, is_admin
from haasd.server.http import HttpConnection, Limits, error_body, json_response, linger_close
from haasd.server.metrics import ServerCollector, exposition
from haasd.server.routes import PeerContext, Router
from haasd.server.service import TokenService
from haasd.server.starting import Starting
from haasd.tokens import HUMAN_ID_RE

if TYPE_CHECKING:
    from haasd.consent import ConsentFlow

__all__ = ["TokenServer", "peer_of"]

_log = structlog.get_logger("haasd.server")
_audit = structlog.get_logger("haasd.audit")
_UCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid
_SO_PEERGROUPS: Final = getattr(socket, "SO_PEERGROUPS", 59)  # Linux's number; not in 3.11
_MAX_GROUPS: Final = 256  # Python caps getsockopt buffers at 1024 bytes
_ACCEPT_RETRY: Final = 0.1
#: refusals being written at once; beyond this, excess connections are just closed
_MAX_REFUSING: Final = 64


def peer_of(stream: anyio.abc.SocketStream) -> Peer:
    """The peer's credentials from the kernel (``SO_PEERCRED``)."""
    sock: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)  # noqa: S610
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(uid=uid, gid=gid, pid=pid, groups=_peer_groups(sock))


def _peer_groups(sock: socket.socket) -> frozenset[int]:
    """The peer's supplementary groups (Linux ≥ 4.13), or none where unsupported."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, _MAX_GROUPS * 4)
    except OSError:  # ERANGE (more groups than we ask for) or no SO_PEERGROUPS
        return frozenset()
    return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))


def _too_many(reason: str) -> bytes:
    body = error_body(503, "too_many_connections", reason, retry_after=1)
    answer = json_response(503, body, {"Retry-After": "1", "Connection": "close"})
    return answer


def _forbidden(peer: Peer) -> bytes:
    message = (
        f"no [[access]] rule matches this peer (uid {peer.uid}, gid {peer.gid}); an operator "
        "must add an [[access]] rule naming its user or group, then reload haasd"
    )
    return json_response(403, error_body(403, "forbidden", message), {"Connection": "close"})


class TokenServer:
    """Serves tokens, statuses, events and metrics over a Unix socket listener.

    With ``consents`` it also takes consents (``/v1/consents``, see
    :mod:`haasd.server.consents`); without, those routes answer 404 ``not_found``.

    ``clock`` times the connections (deadlines, the watchdog) and the log windows: real
    seconds, the machine's clock by default — also in ``haasd demo``, whose own clock
    runs fast. Tests pass a manual clock to step through a timeout instead of waiting.

    ``starting``: it serves before the daemon has started — before every grant is
    loaded — until :meth:`started` (see :mod:`haasd.server.starting`).
    """

    def __init__(
        self,
        service: TokenService,
        rules: Sequence[AccessRule],
        *,
        daemon_uid: int | None = None,
        limits: Limits = Limits(),  # noqa: B008 - frozen, so sharing the default is safe
        human_id_pattern: re.Pattern[str] = HUMAN_ID_RE,
        collectors: Iterable[Collector] = (),
        consents: ConsentFlow | None = None,
        clock: Clock | None = None,
        starting: bool = False,
    ) -> None:
        if not hasattr(socket, "SO_PEERCRED"):
            raise RuntimeError("haasd's token server needs SO_PEERCRED (Linux)")
        self.limits = limits
        self._clock: Clock = SystemClock() if clock is None else clock
        #: this server's own registry (never prometheus-client's global one)
        self.registry = CollectorRegistry(auto_describe=True)
        self._router = Router(
            service,
            rules,
            daemon_uid=os.geteuid() if daemon_uid is None else daemon_uid,
            limits=limits,
            human_id_pattern=human_id_pattern,
            metrics=exposition(self.registry),
            consents=consents,
            monotonic=self._clock.monotonic,
            starting=Starting() if starting else None,
        )
        #: open connections, and the peer context each serves
        self._connections: dict[HttpConnection, PeerContext] = {}
        self._per_uid: Counter[int] = Counter()
        self._refusing = 0
        self._serving = False
        #: set when the last connection ends, while a stop waits for that
        self._emptied: anyio.Event | None = None
        self.registry.register(ServerCollector(self._router, lambda: len(self._connections)))
        for collector in collectors:
            self.registry.register(collector)

    @property
    def connections(self) -> int:
        return len(self._connections)

    def register_collector(self, collector: Collector) -> None:
        """Add figures to ``/metrics`` (the refresh engine's counters, the rate budget)."""
        self.registry.register(collector)

    def started(self) -> None:
        """The daemon has started (every grant loaded, every part running): requests
        waiting for that are answered now, and none waits again."""
        self._router.started()

    def update_rules(self, rules: Sequence[AccessRule]) -> None:
        """New ``[[access]]`` rules (SIGHUP); open connections use them from their next
        request on, and those of peers no rule matches any more are closed (an event
        stream at once, an answer in flight once it is out)."""
        self._router.update_rules(rules)
        for conn, context in self._connections.items():
            if not context.matched:
                conn.closing = True
                if not conn.answering:
                    conn.scope.cancel()

    async def serve(
        self,
        listener: anyio.abc.SocketListener,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept and serve until cancelled; ``task_status.started()`` once accepting.

        Cancelling it stops accepting at once and closes idle connections; answers in
        progress get ``Limits.shutdown_grace`` seconds to go out before it returns.
        """
        if self._serving:
            raise RuntimeError("a TokenServer serves once")
        self._serving = True
        stopping = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                conns: TaskGroup = await tg.start(self._connection_group, stopping)
                try:
                    task_status.started()
                    await self._accept_loop(listener, conns)
                finally:
                    stopping.set()
                    for conn in self._connections:
                        conn.closing = True
                        if not conn.answering:
                            conn.scope.cancel()
        finally:
            self._router.tally.flush()  # the counts still pending

    async def _connection_group(
        self, stopping: anyio.Event, *, task_status: TaskStatus[TaskGroup]
    ) -> None:
        """The connections' task group, shielded from what cancels the accept loop."""
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as conns:
                conns.start_soon(self._watchdog)
                task_status.started(conns)
                await stopping.wait()
                if self._connections:
                    self._emptied = anyio.Event()
                    with anyio.move_on_after(self.limits.shutdown_grace):
                        await self._emptied.wait()
                conns.cancel_scope.cancel()

    async def _watchdog(self) -> None:
        """Close connections past their deadline (idle, slow request, stalled reader)."""
        tick = self.limits.watchdog_tick
        tally = self._router.tally
        clock = self._clock
        while True:
            await clock.sleep(tick)
            now = clock.monotonic()
            for conn in list(self._connections):
                conn.expire(now)
            tally.flush(now)

    async def _accept_loop(self, listener: anyio.abc.SocketListener, conns: TaskGroup) -> None:
        limits = self.limits
        while True:
            try:
                stream = await listener.accept()
            except anyio.ClosedResourceError:
                return
            except (anyio.BrokenResourceError, OSError) as exc:  # EMFILE and friends
                _log.warning("accept failed; retrying", error=str(exc.__cause__ or exc))
                await anyio.sleep(_ACCEPT_RETRY)
                continue
            try:
                peer = peer_of(stream)
            except OSError as exc:
                _log.warning("cannot read peer credentials; closing", error=str(exc))
                await _close(stream)
                continue
            matched = self._router.match(peer)
            if not matched:
                self._deny(conns, stream, peer)
                continue
            # the last admin_reserve slots are for admins
            room = limits.max_connections - (0 if is_admin(matched) else limits.admin_reserve)
            if len(self._connections) >= room:
                self._refuse(conns, stream, peer, "too many connections to haasd")
            elif self._per_uid[peer.uid] >= limits.max_connections_per_uid:
                self._refuse(conns, stream, peer, "too many connections from this user")
            else:
                context = self._router.connect(peer)
                tally = self._router.tally
                conn = HttpConnection(
                    stream,
                    context.handle,
                    limits,
                    tally=tally,
                    uid=peer.uid,
                    monotonic=self._clock.monotonic,
                )
                self._connections[conn] = context
                self._per_uid[peer.uid] += 1
                conns.start_soon(self._run, conn, stream, context)

    def _deny(self, conns: TaskGroup, stream: anyio.abc.SocketStream, peer: Peer) -> None:
        """403 for a peer no rule matches; it holds no slot."""
        self._router.tally.note(
            _audit,
            "warning",
            "access.denied",
            peer.uid,
            peer_gid=peer.gid,
            peer_pid=peer.pid,
            route="connect",
            reason="no [[access]] rule matches this peer's uid/gid",
        )
        self._answer_and_close(conns, stream, _forbidden(peer))

    def _refuse(
        self, conns: TaskGroup, stream: anyio.abc.SocketStream, peer: Peer, reason: str
    ) -> None:
        """503 for a peer beyond the connection limits."""
        tally = self._router.tally
        tally.note(
            _log, "warning", "connection refused", peer.uid, reason=reason, peer_pid=peer.pid
        )
        self._answer_and_close(conns, stream, _too_many(reason))

    def _answer_and_close(
        self, conns: TaskGroup, stream: anyio.abc.SocketStream, answer: bytes
    ) -> None:
        if self._refusing >= _MAX_REFUSING:
            conns.start_soon(_close, stream)
            return
        self._refusing += 1
        conns.start_soon(self._write_refusal, stream, answer)

    async def _write_refusal(self, stream: anyio.abc.SocketStream, answer: bytes) -> None:
        try:
            await linger_close(stream, answer)
        finally:
            self._refusing -= 1
            await _close(stream)

    async def _run(
        self, conn: HttpConnection, stream: anyio.abc.SocketStream, context: PeerContext
    ) -> None:
        peer = context.peer
        try:
            await conn.run()
        except Exception:  # noqa: BLE001 - a defect costs this connection, never the server
            _log.exception("connection failed", peer_uid=peer.uid, peer_pid=peer.pid)
        finally:
            context.close()
            del self._connections[conn]
            if not self._connections and self._emptied is not None:
                self._emptied.set()
            self._per_uid[peer.uid] -= 1
            if self._per_uid[peer.uid] <= 0:
                del self._per_uid[peer.uid]
            await _close(stream)


async def _close(stream: anyio.abc.AsyncResource) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await stream.aclose()
        except OSError:
            pass
