"""The grants in memory, each as one ``bytes``: the engine holds 100,000 of them.

A :class:`Grant` with its two Secrets, their strings and six floats is about 580 bytes of
objects; packed — six doubles, a few small numbers and both tokens in one bytes object —
it is about 200. :class:`GrantTable` keeps every grant of the usual shape (no error, no
failures, no refresh in flight: nearly all of them, nearly all the time) packed and any
other as its Grant, and hands out Grants: unpacking one costs a few microseconds, a small
part of a token request.

At start a grant's tokens stay as the store sealed them (:class:`Sealed`: loading is
then reading, not decrypting) until the grant is first asked for, or until
:meth:`GrantTable.open_sealed` reaches it — the engine runs that between requests right
after start, so a row that does not open is quarantined within seconds all the same.

The packed bytes hold open tokens in the clear, as the strings they replace did; the
table never shows them (its repr is a count) and nothing but this module reads them.
"""

from __future__ import annotations

import functools
import math
import struct
import threading
from collections.abc import Iterator, KeysView
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

from haasd.grants import Grant, State
from haasd.secret import Secret

if TYPE_CHECKING:
    from haasd.refresh_policy import Timed

__all__ = ["GrantTable", "Opener", "Sealed", "Times", "times_of", "trusted_grant"]

#: access_expires_at, refresh_expires_at, consented_at, last_refresh_at, next_refresh_at,
#: last_served_at (NaN: None), the state's index, the environment's and the scope's, the
#: form (open or sealed) and the access token's length in bytes; then both tokens: UTF-8,
#: or (sealed) the blobs as stored
_HEAD: Final = struct.Struct("<6dBHHBI")
_OPEN: Final = 0
_SEALED: Final = 1
_STATES: Final = tuple(State)
_STATE_INDEX: Final = {state: i for i, state in enumerate(_STATES)}
#: environments and scopes a table can number (a grant of another stays a Grant)
_MAX_SHAPES: Final = 0xFFFF
_NONE: Final = math.nan
#: each Grant field's slot setter, in field order (see trusted_grant)
_SETTERS: Final = tuple(Grant.__dict__[field.name].__set__ for field in fields(Grant))


def trusted_grant(values: tuple[Any, ...]) -> Grant:
    """The Grant of ``values`` in field order, checked already (the human id is text, the
    scope split words): its slots set directly, in half the time of ``Grant(...)``."""
    grant: Grant = object.__new__(Grant)
    for set_field, value in zip(_SETTERS, values, strict=True):
        set_field(grant, value)
    return grant


class Times(NamedTuple):
    """What a scan of every grant needs (metrics, status): no tokens, nothing unpacked
    beyond these."""

    human_id: str
    state: State
    access_expires_at: float
    refresh_expires_at: float
    next_refresh_at: float | None


def times_of(grant: Grant) -> Times:
    return Times(
        grant.human_id, grant.state, grant.access_expires_at, grant.refresh_expires_at,
        grant.next_refresh_at,
    )  # fmt: skip


class Sealed(NamedTuple):
    """A grant as its store row holds it, tokens still sealed: what a store hands the
    engine at start for every row of the usual shape (see :meth:`GrantStore.read_grants`).
    ``scope`` and ``state`` are as stored: the tokens open only beside them."""

    human_id: str
    environment: str
    scope: str
    state: State
    access_expires_at: float
    refresh_expires_at: float
    consented_at: float
    last_refresh_at: float | None
    next_refresh_at: float | None
    last_served_at: float | None
    access_sealed: bytes
    refresh_sealed: bytes


class Opener(Protocol):
    """The store's side of opening a :class:`Sealed` row's tokens."""

    def open_tokens(self, row: Sealed) -> tuple[str, str]:
        """The access and refresh token, or ValueError saying why the row is unreadable
        (a column and a cause, never a value)."""
        ...

    def unreadable(self, human_id: str, reason: str) -> Grant:
        """Quarantine ``human_id`` (the store notes and logs it); its stand-in grant."""
        ...


class _Numbered:
    """Values (environments, scope tuples) numbered in the order first seen. A value is
    numbered under a lock: grants are packed in the store's worker thread at start."""

    __slots__ = ("_lock", "index", "values")

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.index: dict[Any, int] = {}
        self._lock = threading.Lock()

    def number(self, value: object) -> int | None:
        """``value``'s number (given now if new), or None when the numbers ran out."""
        found = self.index.get(value)
        if found is not None:
            return found
        with self._lock:
            found = self.index.get(value)
            if found is None and len(self.values) < _MAX_SHAPES:
                self.values.append(value)
                found = self.index[value] = len(self.values) - 1
            return found


class GrantTable:
    """Human id → :class:`Grant`, as a dict holds them (``get``, ``[]``, ``pop``, ``in``,
    iteration), kept packed where the grant allows it (see the module). ``opener`` opens
    the rows put with :meth:`put_sealed`."""

    __slots__ = ("_environments", "_held", "_scope_texts", "_scopes", "_to_open", "opener")

    def __init__(self) -> None:
        self._held: dict[str, bytes | Grant] = {}
        self._environments = _Numbered()
        self._scopes = _Numbered()  # scope tuples (open grants)
        self._scope_texts = _Numbered()  # scopes as stored (sealed rows)
        self._to_open: list[str] = []  # the humans put sealed, for open_sealed
        self.opener: Opener | None = None

    def __repr__(self) -> str:
        return f"GrantTable({len(self._held)} grants)"

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, human_id: object) -> bool:
        return human_id in self._held

    def __iter__(self) -> Iterator[str]:
        return iter(self._held)

    def keys(self) -> KeysView[str]:
        return self._held.keys()

    def get(self, human_id: str) -> Grant | None:
        held = self._held.get(human_id)
        if held is None or isinstance(held, Grant):
            return held
        if held[_FORM] == _SEALED:
            return self._open(human_id, held)
        return self._unpack(human_id, held)

    def __getitem__(self, human_id: str) -> Grant:
        grant = self.get(human_id)
        if grant is None:
            raise KeyError(human_id)
        return grant

    def __setitem__(self, human_id: str, grant: Grant) -> None:
        self._held[human_id] = self._pack(grant)

    def pop(self, human_id: str, default: Grant | None = None) -> Grant | None:
        grant = self.get(human_id)
        self._held.pop(human_id, None)
        return default if grant is None else grant

    def values(self) -> Iterator[Grant]:
        """Every grant (unpacked one at a time: none is kept)."""
        for human_id in list(self._held):
            if (grant := self.get(human_id)) is not None:
                yield grant

    def times(self) -> Iterator[Times]:
        """Every grant's :class:`Times`, tokens left packed (a scan of 100,000 grants takes
        some tens of milliseconds)."""
        unpack, states = _HEAD.unpack_from, _STATES
        for human_id, held in list(self._held.items()):
            if isinstance(held, Grant):
                yield times_of(held)
                continue
            access_at, refresh_at, _, _, next_at, _, state, _, _, _, _ = unpack(held)
            yield Times(human_id, states[state], access_at, refresh_at, _or_none(next_at))

    @property
    def packed(self) -> int:
        """How many grants are held packed (the rest are held as Grants)."""
        return sum(1 for held in self._held.values() if type(held) is bytes)

    # -- sealed rows -----------------------------------------------------------------------

    def put_sealed(self, row: Sealed) -> None:
        """Hold ``row`` with its tokens sealed, to be opened when first asked for. A row
        this table cannot number the scope or environment of is opened at once."""
        # the numbers' dicts first: 100,000 rows at start share a handful of each
        environment = self._environments.index.get(row.environment)
        if environment is None:
            environment = self._environments.number(row.environment)
        scope = self._scope_texts.index.get(row.scope)
        if scope is None:
            scope = self._scope_texts.number(row.scope)
        if environment is None or scope is None or _nan_in(row):
            self._held[row.human_id] = self._pack(self._grant_of(row))
            return
        head = _HEAD.pack(
            row.access_expires_at, row.refresh_expires_at, row.consented_at,
            _or_nan(row.last_refresh_at), _or_nan(row.next_refresh_at),
            _or_nan(row.last_served_at), _STATE_INDEX[row.state], environment, scope,
            _SEALED, len(row.access_sealed),
        )  # fmt: skip
        self._held[row.human_id] = b"".join((head, row.access_sealed, row.refresh_sealed))
        self._to_open.append(row.human_id)

    def open_sealed(self, limit: int) -> bool:
        """Open up to ``limit`` of the rows still sealed; whether any are left."""
        to_open, held = self._to_open, self._held
        for _ in range(limit):
            if not to_open:
                break
            human_id = to_open.pop()
            packed = held.get(human_id)
            if type(packed) is bytes and packed[_FORM] == _SEALED:
                self._open(human_id, packed)
        if not to_open:
            self._to_open = []  # the list's memory goes too
        return bool(self._to_open)

    def _open(self, human_id: str, packed: bytes) -> Grant:
        """The grant of a sealed row, now held open (or its quarantined stand-in)."""
        (access_at, refresh_at, consented, refreshed, next_at, served, state, environment,
         scope, _, length) = _HEAD.unpack_from(packed)  # fmt: skip
        start = _HEAD.size
        row = Sealed(
            human_id, self._environments.values[environment], self._scope_texts.values[scope],
            _STATES[state], access_at, refresh_at, consented, _or_none(refreshed),
            _or_none(next_at), _or_none(served), packed[start : start + length],
            packed[start + length :],
        )  # fmt: skip
        grant = self._grant_of(row)
        self._held[human_id] = self._pack(grant)
        return grant

    def _grant_of(self, row: Sealed) -> Grant:
        if self.opener is None:
            raise RuntimeError("a GrantTable holding sealed rows needs its opener")
        try:
            access, refresh = self.opener.open_tokens(row)
        except ValueError as exc:
            return self.opener.unreadable(row.human_id, str(exc))
        return trusted_grant((
            row.human_id, row.environment, _scope_tuple(row.scope), Secret(access),
            row.access_expires_at, Secret(refresh), row.refresh_expires_at, row.consented_at,
            row.last_refresh_at, row.state, None, 0, row.next_refresh_at, row.last_served_at,
            None,
        ))  # fmt: skip

    # -- the packing ---------------------------------------------------------------------

    def _pack(self, grant: Grant) -> bytes | Grant:
        """``grant`` packed, or itself when it is not of the usual shape."""
        if grant.last_error is not None or grant.consecutive_failures or grant.intent:
            return grant
        if _nan_in(grant):
            return grant  # a NaN would read back as None
        environment = self._environments.number(grant.environment)
        scope = self._scopes.number(grant.scope)
        if environment is None or scope is None:
            return grant
        try:
            access = grant.access_token.reveal().encode("utf-8")
            refresh = grant.refresh_token.reveal().encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: not a token HaaS gives
            return grant
        head = _HEAD.pack(
            grant.access_expires_at, grant.refresh_expires_at, grant.consented_at,
            _or_nan(grant.last_refresh_at), _or_nan(grant.next_refresh_at),
            _or_nan(grant.last_served_at), _STATE_INDEX[grant.state], environment, scope,
            _OPEN, len(access),
        )  # fmt: skip
        return b"".join((head, access, refresh))

    def _unpack(self, human_id: str, packed: bytes) -> Grant:
        (access_at, refresh_at, consented, refreshed, next_at, served, state, environment,
         scope, _, length) = _HEAD.unpack_from(packed)  # fmt: skip
        start = _HEAD.size
        access = packed[start : start + length].decode("utf-8")
        refresh = packed[start + length :].decode("utf-8")
        return trusted_grant((
            human_id, self._environments.values[environment], self._scopes.values[scope],
            Secret(access), access_at, Secret(refresh), refresh_at, consented,
            _or_none(refreshed), _STATES[state], None, 0, _or_none(next_at), _or_none(served),
            None,
        ))  # fmt: skip


#: the form byte's offset in a packed grant
_FORM: Final = _HEAD.size - 5


@functools.lru_cache(maxsize=1024)
def _scope_tuple(scope: str) -> tuple[str, ...]:
    """One shared tuple per distinct scope as stored: 100,000 grants hold a handful."""
    return tuple(scope.split())


def _nan_in(grant: Timed) -> bool:
    """Whether a time of ``grant`` may be NaN (which would read back as None): their sum
    is NaN then (and for infinities of both signs, which are no time either)."""
    total = grant.access_expires_at + grant.refresh_expires_at + grant.consented_at
    for value in (grant.last_refresh_at, grant.next_refresh_at, grant.last_served_at):
        if value is not None:
            total += value
    return math.isnan(total)


def _or_nan(value: float | None) -> float:
    return _NONE if value is None else value


def _or_none(value: float) -> float | None:
    return None if value != value else value  # NaN is the one value unequal to itself
