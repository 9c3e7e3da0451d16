"""Instants as text: epoch seconds shown as UTC. Plain functions, no clock and no I/O,
so that policy modules and the client library can format times without the daemon's
clocks (:mod:`haasd.clock`)."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["rfc3339", "utc"]


def utc(epoch: float) -> datetime:
    """Epoch seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(epoch, UTC)


def rfc3339(epoch: float) -> str:
    """Epoch seconds as RFC 3339 UTC with a ``Z``, to the second."""
    return utc(epoch).strftime("%Y-%m-%dT%H:%M:%SZ")
