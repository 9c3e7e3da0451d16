"""What the simulator saw, for tests to assert on."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["SimulatorStats", "SpentTokenRecord", "TokenRequestRecord"]


class TokenRequestRecord(NamedTuple):
    """One request to ``/token``, as it arrived and as it was answered."""

    time: float
    """The clock's wall time when the simulator handled it."""
    grant_type: str | None
    """As sent; ``None`` when missing or the body could not be read."""
    human_id: str | None
    """The human the code or refresh token belongs to, when known."""
    status: int | None
    """HTTP status sent; ``None`` when the connection was dropped without an answer."""


class SpentTokenRecord(NamedTuple):
    """A spent (rotated) refresh token presented again: a grace replay or a reuse event."""

    time: float
    """The clock's wall time when it was presented again."""
    human_id: str
    rotated_at: float
    """When the token was spent: the rotation whose answer the client may have lost."""
    replayed: bool
    """True: honoured as a grace replay; False: a reuse event."""


@dataclass(slots=True)
class SimulatorStats:
    """Counters, all starting at zero (and one log); read them, don't write them."""

    requests: int = 0
    """Every HTTP request received, any path, faults included."""
    authorize_requests: int = 0
    token_requests: Counter[str] = field(default_factory=Counter)
    """``/token`` requests by grant_type as sent (``""`` when missing or unreadable)."""
    statuses: Counter[int] = field(default_factory=Counter)
    """Responses sent, by HTTP status (injected ones included)."""
    codes_exchanged: int = 0
    """Authorization codes successfully exchanged for tokens."""
    code_replays: int = 0
    """Authorization codes presented again after their first use."""
    refreshes: Counter[str] = field(default_factory=Counter)
    """Successful refresh_token grants per human (grace replays not included)."""
    grace_replays: int = 0
    """Rotated refresh tokens accepted once more within ``reuse_grace``."""
    reuse_events: int = 0
    """Spent (rotated) refresh tokens presented outside the grace window."""
    families_revoked: int = 0
    """Grants revoked: reuse detection, code replay, :meth:`Simulator.revoke`, or a
    refresh token revoked at ``/revoke``."""
    revocations: int = 0
    """RFC 7009 revocation requests from an authenticated client with a ``token``
    (known or not, each answered 200)."""
    rate_limited: int = 0
    """429s sent by the rate limiter (injected 429s are counted in ``injected``)."""
    injected: int = 0
    """Responses replaced by fault injection (fail, flaky, malformed)."""
    dropped: int = 0
    """Connections closed without an answer by :meth:`Simulator.drop_next`."""
    spent_presented: list[SpentTokenRecord] = field(default_factory=list)
    """Every grace replay and reuse event, in order: which rotation each one repeated."""
