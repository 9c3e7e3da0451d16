"""What the socket server needs from the daemon: the refresh engine, seen from outside.

The server reads grants from memory (:meth:`TokenService.grant`) and decides by itself,
with :mod:`haasd.grants`, whether the token in hand can be served; only when it cannot
does it await the engine. Nothing here touches SQLite on the request path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from haasd.clock import Clock
from haasd.events import EventBus
from haasd.grantpack import Times
from haasd.grants import Grant, Policy
from haasd.health import Health

__all__ = ["TokenService"]


class TokenService(Protocol):
    """The refresh engine's face towards the socket server."""

    @property
    def events(self) -> EventBus:
        """Where lifecycle events are published (``GET /v1/events`` subscribes)."""
        ...

    @property
    def clock(self) -> Clock:
        """The clock token expiries are judged by."""
        ...

    @property
    def policy(self) -> Policy:
        """The grant policy (for :func:`haasd.grants.state_at`)."""
        ...

    def grant(self, human_id: str) -> Grant | None:
        """The grant in memory, or None. Synchronous and cheap: never touches the store."""
        ...

    async def peek(self, human_id: str) -> Grant | None:
        """While the grants load (:meth:`grant` has none yet): the grant as stored, read
        alone; afterwards the grant in memory. None if there is none to judge."""
        ...

    def grants(self) -> Iterable[Grant]:
        """Every grant in memory (for listings and metrics); never touches the store."""
        ...

    def grant_times(self) -> Iterable[Times]:
        """Every grant's times and state, without its tokens (a cheap scan: metrics)."""
        ...

    def mark_served(self, grant: Grant, now: float) -> None:
        """The server handed out ``grant``'s access token at wall time ``now``.

        Called on the fast path only (a token served straight from :meth:`grant`);
        :meth:`ensure_fresh` counts as served by itself. Keeps ``refresh_idle`` honest.
        Synchronous and cheap: it runs for every token served.
        """
        ...

    async def ensure_fresh(
        self, human_id: str, min_ttl: float, *, wait: float, peer: int | None
    ) -> Grant:
        """A grant whose access token has more than ``min_ttl`` seconds left (and the
        policy's ``serve_margin``), refreshing on ``peer``'s behalf if need be — within
        :mod:`haasd.demand`'s limits, and waiting at most ``wait`` seconds.

        Raises :class:`~haasd.errors.UnknownHumanError`,
        :class:`~haasd.errors.NeedsReconsentError`, or
        :class:`~haasd.errors.TokenUnavailableError` (with ``retry_after``) — at once
        when no refresh could finish within ``wait``.
        """
        ...

    async def refresh_now(self, human_id: str, *, wait: float, peer: int | None) -> Grant:
        """Refresh now (admin), within the on-demand limits, waiting at most ``wait``.
        Raises :class:`~haasd.errors.UnknownHumanError`,
        :class:`~haasd.errors.NeedsReconsentError`,
        :class:`~haasd.errors.TokenUnavailableError`, or the
        :class:`~haasd.errors.AuthError` the attempt met."""
        ...

    async def delete(self, human_id: str) -> bool:
        """Erase the grant from the store and memory; False if there was none."""
        ...

    def health(self) -> Health:
        """Ok, or degraded and why, with the engine's figures (``GET /v1/health``)."""
        ...
