"""What one client may cost the server: sizes, counts and real-time limits.

Times are real seconds: they protect sockets, not tokens. A value that is not a positive
number (or, where zero turns a feature off, not zero or more) is refused when ``Limits`` is
built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

__all__ = ["Limits"]


_MAY_BE_ZERO: Final = frozenset({"admin_connections", "audit_window", "refusal_window"})


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may cost. Times are real seconds."""

    #: bytes of request line + headers
    max_head: int = 16 * 1024
    max_headers: int = 64
    max_body: int = 64 * 1024
    #: from a request's first byte to its last (slowloris)
    request_timeout: float = 10.0
    #: a kept-alive connection waiting for its next request
    idle_timeout: float = 60.0
    #: writing one answer (or one event) to a reader that does not read
    write_timeout: float = 10.0
    #: waiting for the refresh engine on a client's behalf
    handler_timeout: float = 30.0
    max_connections: int = 512
    #: of ``max_connections``, this many only peers with an admin rule may use (at most
    #: half of them), so apps filling the server never lock an operator out
    admin_connections: int = 16
    max_connections_per_uid: int = 64
    #: the largest ``min_ttl`` a client may ask for, in seconds
    max_min_ttl: int = 86400
    #: events a slow ``/v1/events`` reader may fall behind before it gets ``lost``
    events_queue: int = 256
    heartbeat: float = 15.0
    #: in-flight requests get this long to finish when the server stops
    shutdown_grace: float = 5.0
    #: repeats of one token to one connection within this many seconds share an audit
    #: line (its ``count`` says how many); 0 logs every handout on its own line
    audit_window: float = 1.0
    #: repeats of a refusal or error by one peer within this many seconds share a line
    #: (its ``count`` says how many; see :mod:`haasd.server.tally`); 0 logs each
    refusal_window: float = 10.0
    #: token answers kept encoded, for the humans served most recently (see
    #: :mod:`haasd.server.bodies`): about half a kilobyte each
    cached_answers: int = 4096

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            low_ok = value >= 0 if name in _MAY_BE_ZERO else value > 0
            if not low_ok or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"Limits.{name} must be a positive number, got {value!r}")

    @property
    def admin_reserve(self) -> int:
        """Connections only admins may use: ``admin_connections``, at most half of all."""
        return min(self.admin_connections, self.max_connections // 2)

    @property
    def watchdog_tick(self) -> float:
        """How often the server looks for connections past their deadline."""
        shortest = min(self.request_timeout, self.idle_timeout, self.write_timeout)
        return min(1.0, max(0.02, shortest / 8))
