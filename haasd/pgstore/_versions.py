"""Each grant's version as this instance last read or wrote it, compactly.

A cluster's instance begins a refresh only on the version it read (see
:data:`haasd.pgstore._sql.BEGIN_LEASED`), so it keeps one per grant: 100,000 of them in a
``dict`` of ints took about 80 bytes each. The grants of the last full read are kept in
two flat arrays instead — their ids as read, in order, and the versions beside them in
an ``array('q')``: 16 bytes a grant, the id strings shared with the engine's — and found
by bisection. A version written later for one of them replaces its slot; only grants
the full read did not see (new consents, and ids out of order) go into a small dict.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from typing import Final

__all__ = ["Versions"]

#: a slot whose grant was deleted since the full read
_GONE: Final = -1


class Versions:
    __slots__ = ("_ids", "_more", "_of")

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._of = array("q")
        self._more: dict[str, int] = {}

    def restart(self) -> None:
        """A full read begins: every version is read again, in human id order."""
        self._ids, self._of, self._more = [], array("q"), {}

    def read(self, human_id: str, version: int) -> None:
        """``human_id``'s version as read (a full read's rows come in id order; one out of
        order, or any other read, goes to the dict)."""
        ids = self._ids
        if human_id in self._more or (ids and human_id <= ids[-1]):
            self.put(human_id, version)
        else:
            ids.append(human_id)
            self._of.append(version)

    def get(self, human_id: str) -> int | None:
        if (found := self._more.get(human_id)) is not None:
            return found
        at = self._slot(human_id)
        if at is None or (version := self._of[at]) == _GONE:
            return None
        return version

    def put(self, human_id: str, version: int) -> None:
        at = self._slot(human_id)
        if at is None:
            self._more[human_id] = version
        else:
            self._of[at] = version

    def pop(self, human_id: str) -> None:
        self._more.pop(human_id, None)
        if (at := self._slot(human_id)) is not None:
            self._of[at] = _GONE

    def __len__(self) -> int:
        return sum(v != _GONE for v in self._of) + len(self._more)

    def _slot(self, human_id: str) -> int | None:
        ids = self._ids
        at = bisect_left(ids, human_id)
        return at if at < len(ids) and ids[at] == human_id else None
