"""The token service on the Unix socket: HTTP/1.1 (httptools on anyio), no framework.

* :class:`TokenServer` — routes, peer access rules, audit, limits, ``/metrics``;
* :func:`open_listener` — the socket, created safely or inherited from systemd;
* :class:`TokenService` — what the server needs from the refresh engine;
* :mod:`haasd.server.access` — the pure access decisions.
"""

from __future__ import annotations

from haasd.server.access import Decision, Peer, decide
from haasd.server.http import Limits
from haasd.server.listener import (
    SocketInUseError,
    SocketPathError,
    UnixListener,
    bind_socket,
    open_listener,
)
from haasd.server.server import TokenServer
from haasd.server.service import TokenService

__all__ = [
    "Decision",
    "Limits",
    "Peer",
    "SocketInUseError",
    "SocketPathError",
    "TokenServer",
    "TokenService",
    "UnixListener",
    "bind_socket",
    "decide",
    "open_listener",
]
