"""The client-side token cache and single-flight bookkeeping. Pure: no locks, no I/O.

A token is kept until ``refresh_margin`` (or the caller's ``min_ttl``, if larger) before
it expires, judged on a monotonic clock from when it was *asked for* — the answer's
``expires_in`` counted from the request, never later. The clients hold the locks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from haasd.client._errors import DaemonUnreachable, HaasdClientError
from haasd.client._model import Token

__all__ = ["CacheKey", "Flight", "TokenCache", "whole_seconds"]

#: (human_id, sorted scopes)
CacheKey = tuple[str, tuple[str, ...]]


def whole_seconds(min_ttl: float) -> int:
    """``min_ttl`` as the daemon takes it: whole seconds, rounded up."""
    if not math.isfinite(min_ttl) or min_ttl < 0:
        raise ValueError(f"min_ttl must be a number of seconds >= 0, not {min_ttl!r}")
    return math.ceil(min_ttl)


@dataclass(frozen=True, slots=True)
class _Entry:
    token: Token
    deadline: float  # monotonic time the token expires


class TokenCache:
    """Tokens by (human, scopes), each until shortly before it expires."""

    __slots__ = ("_entries", "refresh_margin")

    def __init__(self, refresh_margin: float) -> None:
        if not math.isfinite(refresh_margin) or refresh_margin < 0:
            raise ValueError(f"refresh_margin must be >= 0, not {refresh_margin!r}")
        self.refresh_margin = refresh_margin
        self._entries: dict[CacheKey, _Entry] = {}

    def get(self, key: CacheKey, min_ttl: float, now: float) -> Token | None:
        """The cached token if it has more than the margin (and ``min_ttl``) left at
        ``now``, with ``expires_in`` counted down to ``now``."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        left = entry.deadline - now
        if left <= self.refresh_margin or left <= min_ttl:
            return None
        if int(left) == entry.token.expires_in:
            return entry.token
        return dataclasses.replace(entry.token, expires_in=int(left))

    def put(self, key: CacheKey, token: Token, asked_at: float) -> None:
        self._entries[key] = _Entry(token, asked_at + token.expires_in)

    def invalidate(self, human_id: str) -> None:
        """Forget every token of ``human_id`` (whatever the scopes)."""
        for key in [k for k in self._entries if k[0] == human_id]:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


class Flight:
    """One cache key's requests to the daemon, for single flight.

    Callers take the key's lock; the first one asks the daemon, the others find its
    token in the cache. When that request failed, the waiters that queued behind it
    share its error (rather than each waiting out the same timeout in turn) if their
    own request could not have fared better: they need at least as much ``min_ttl``,
    or the daemon was not reachable at all.
    """

    __slots__ = ("_error", "_min_ttl", "_number")

    def __init__(self) -> None:
        self._number = 0
        self._error: HaasdClientError | None = None
        self._min_ttl = 0

    def ticket(self) -> int:
        """Taken before waiting for the lock."""
        return self._number

    def shared_error(self, ticket: int, min_ttl: int) -> HaasdClientError | None:
        """The error of a request that ended while the ticket's holder waited, if it
        applies to that holder too (see the class)."""
        error = self._error
        if ticket == self._number or error is None:
            return None
        if min_ttl >= self._min_ttl or isinstance(error, DaemonUnreachable):
            return error
        return None

    def begin(self, min_ttl: int) -> None:
        self._error = None
        self._min_ttl = min_ttl

    def end(self, error: HaasdClientError | None) -> None:
        self._error = error
        self._number += 1
