"""The token answers kept encoded: those of the humans served most recently.

Encoding a token answer (:class:`~haasd.server.answers.TokenBody`: a JSON document, a
timestamp and the token's fingerprint) costs a few microseconds; keeping one costs about
half a kilobyte. Kept for every human ever served, the answers of a daemon holding 100,000
grants came to some 55 MB, most of them for humans asked for once. So only the
``Limits.cached_answers`` humans served most recently keep theirs (the least recently
served is dropped first): the humans apps ask for again and again are answered from here,
the others are encoded again when they are next asked for — never a different answer,
since a kept answer is used only while it still fits the grant (the same token, the same
expiry).
"""

from __future__ import annotations

from collections import OrderedDict

from haasd.grants import Grant
from haasd.server.answers import TokenBody

__all__ = ["TokenBodies"]


class TokenBodies:
    """At most ``limit`` encoded token answers, by human id, least recently served first."""

    __slots__ = ("_bodies", "_limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"TokenBodies needs a limit of at least 1, got {limit!r}")
        self._limit = limit
        self._bodies: OrderedDict[str, TokenBody] = OrderedDict()

    def body(self, grant: Grant) -> TokenBody:
        """The answer for ``grant``'s token: the one kept if it still fits, else encoded
        (and kept, dropping the least recently served beyond the limit)."""
        bodies, human_id = self._bodies, grant.human_id
        body = bodies.get(human_id)
        if body is not None and body.fits(grant):
            bodies.move_to_end(human_id)
            return body
        body = bodies[human_id] = TokenBody.of(grant)
        bodies.move_to_end(human_id)
        if len(bodies) > self._limit:
            bodies.popitem(last=False)
        return body

    def forget(self, human_id: str) -> None:
        """Drop ``human_id``'s answer (the grant was deleted or is unknown)."""
        self._bodies.pop(human_id, None)

    def __len__(self) -> int:
        return len(self._bodies)

    def __contains__(self, human_id: object) -> bool:
        return human_id in self._bodies
