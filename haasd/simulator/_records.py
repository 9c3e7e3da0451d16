"""What the simulated authorization server remembers: grants, codes and tokens issued.

A *grant* (a :class:`Family`) is one consent: the tokens issued from one authorization
code, and every refresh token rotated from them. Revoking it revokes all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AccessTokenRecord", "Code", "Family", "RefreshTokenRecord"]


@dataclass(slots=True, eq=False)
class Family:
    """One consent (a grant): everything issued from one authorization code."""

    human_id: str
    scope: tuple[str, ...]
    expires_at: float
    """Absolute limit of every refresh token in the family: consent + lifetime."""
    revoked: bool = False


@dataclass(slots=True, eq=False)
class Code:
    """An authorization code, until it is exchanged (or revoked, or expires)."""

    client_id: str
    redirect_uri: str
    scope: tuple[str, ...]
    human_id: str
    challenge: str | None
    expires_at: float
    spent: bool = False
    revoked: bool = False
    family: Family | None = None


@dataclass(slots=True, eq=False)
class RefreshTokenRecord:
    """A refresh token issued: its grant, and whether (and by what) it was rotated."""

    family: Family
    spent_at: float | None = None
    successor: str | None = None
    """The refresh token that replaced this one (rotation)."""
    successor_access: str | None = None
    """The access token issued with ``successor``, replayed within the grace window."""
    grace_used: int = 0
    """How many times it was honoured within the grace window."""


@dataclass(slots=True, eq=False)
class AccessTokenRecord:
    """An access token issued: its grant, scope and expiry."""

    family: Family
    scope: tuple[str, ...]
    expires_at: float
    revoked: bool = False
    """Revoked by itself (RFC 7009); revoking its family revokes it too."""
