"""Reading every grant at start: the store's rows handed over a chunk at a time, either
as Grants or — for the engine — with their tokens still sealed (:class:`Sealed`), opened
later by :class:`TokenOpener` exactly as :func:`~haasd.store._grants.to_grant` opens them.
Both backends read this way."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from haasd.crypto import Sealer
from haasd.errors import DecryptError
from haasd.grantpack import Sealed
from haasd.grants import Grant
from haasd.store._books import Quarantine
from haasd.store._grants import (
    STATES,
    latest,
    open_tokens,
    quarantined,
    to_grants,
    usual,
    why_unreadable,
)
from haasd.store.schema import grant_bound

__all__ = ["Loaded", "Reads", "TokenOpener", "collect_into"]


class Loaded:
    """The grants of :data:`SELECT_GRANTS` rows handed over a chunk at a time (:meth:`take`
    runs in a worker thread, one chunk after another) to ``keep``, in row order; the
    reasons of the unreadable rows among them are kept by human id (see
    :func:`to_grants`). ``sealed``: a row of the usual shape is handed as its
    :class:`Sealed` (its tokens are opened later, by :class:`TokenOpener`)."""

    __slots__ = ("_keep", "_scopes", "_sealed", "_sealer", "_served", "unreadable")

    def __init__(
        self,
        sealer: Sealer,
        scopes: dict[str, tuple[str, ...]],
        served: Mapping[str, float],
        keep: Callable[[list[Grant | Sealed]], None],
        *,
        sealed: bool = False,
    ) -> None:
        self._sealer = sealer
        self._scopes = scopes
        self._served = served
        self._keep = keep
        self._sealed = sealed
        self.unreadable: dict[str, str] = {}

    def take(self, rows: Iterable[Sequence[Any]]) -> None:
        if not self._sealed:
            grants, unreadable = to_grants(rows, self._sealer, self._scopes, self._served)
            self.unreadable.update(unreadable)
            self._keep([*grants])
            return
        kept: list[Grant | Sealed] = []
        unusual = []
        for row in rows:
            if (found := _sealed(row, self._served)) is not None:
                kept.append(found)
            else:
                unusual.append(row)
        grants, unreadable = to_grants(unusual, self._sealer, self._scopes, self._served)
        self.unreadable.update(unreadable)
        kept += grants
        self._keep(kept)


class TokenOpener:
    """Opens the tokens of a :class:`Sealed` row (for :class:`haasd.grantpack.GrantTable`)
    exactly as :func:`to_grant` would; a row that does not open is quarantined."""

    __slots__ = ("_quarantine", "_sealer")

    def __init__(self, sealer: Sealer, quarantine: Quarantine) -> None:
        self._sealer = sealer
        self._quarantine = quarantine

    def open_tokens(self, row: Sealed) -> tuple[str, str]:
        hid = row.human_id
        try:
            bound = grant_bound(
                row.scope, row.state.value, row.access_expires_at, row.refresh_expires_at
            )
            return open_tokens(hid, row.access_sealed, row.refresh_sealed, bound, self._sealer)
        except (DecryptError, ValueError) as exc:
            raise ValueError(why_unreadable(exc)) from exc

    def unreadable(self, human_id: str, reason: str) -> Grant:
        self._quarantine.add({human_id: reason}, warn=True)
        return quarantined(human_id, reason)


def _sealed(row: Sequence[Any], served: Mapping[str, float]) -> Sealed | None:
    """The :class:`Sealed` of a row of the usual shape (:func:`.usual`), else None."""
    (hid, env, scope, at, at_exp, rt, rt_exp, consented, last_refresh, state, _, _,
     next_refresh, last_served, _, _, _) = row  # fmt: skip
    if not (
        type(hid) is str and hid and type(scope) is str and type(at) is bytes
        and type(rt) is bytes and usual(row)
    ):  # fmt: skip
        return None
    known = STATES.get(state)
    if known is None:
        return None
    return _new_sealed(Sealed, (
        hid, sys.intern(env), scope, known, at_exp, rt_exp, consented, last_refresh,
        next_refresh, latest(last_served, served.get(hid)), at, rt,
    ))  # fmt: skip


#: ``Sealed(*values)`` without the generated ``__new__``'s frame (100,000 rows at start)
_new_sealed: Final = tuple.__new__


def collect_into(grants: list[Grant]) -> Callable[[list[Grant | Sealed]], None]:
    """A ``keep`` for :class:`Loaded` (not ``sealed``) that appends to ``grants``."""

    def keep(chunk: list[Grant | Sealed]) -> None:
        for item in chunk:
            if not isinstance(item, Grant):
                raise TypeError("a sealed row where grants were read")
            grants.append(item)

    return keep


class Reads:
    """A store's :meth:`list_grants`, :meth:`read_grants` and :attr:`opener`, both
    backends alike, over its own ``_read`` (how it hands its rows to :class:`Loaded`)."""

    __slots__ = ()
    _sealer: Sealer
    _quarantine: Quarantine

    async def _read(
        self, take: Callable[[list[Grant | Sealed]], None], *, warn: bool, sealed: bool
    ) -> None:
        raise NotImplementedError

    async def list_grants(self, *, warn: bool = True) -> list[Grant]:
        """Every grant, decrypted, ordered by human id; an unreadable row as its
        quarantined stand-in. ``warn``: log each row newly found unreadable, once (the
        commands that print the reason themselves need not)."""
        grants: list[Grant] = []
        await self._read(collect_into(grants), warn=warn, sealed=False)
        return grants

    async def read_grants(
        self, take: Callable[[list[Grant | Sealed]], None], *, warn: bool = True
    ) -> None:
        await self._read(take, warn=warn, sealed=True)

    @property
    def opener(self) -> TokenOpener:
        return TokenOpener(self._sealer, self._quarantine)
