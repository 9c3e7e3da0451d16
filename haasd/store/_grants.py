"""The ``grants`` table: its SQL, in one column order, and its rows ↔ :class:`Grant`.

The tokens are sealed with the human id, the column name and the row's scope, state and
both expiries (:data:`haasd.store.schema.BOUND`) as associated data: a row whose scope was
widened, whose expiry was moved or whose state was set back to ``active`` by someone
without the key does not open, and neither does a token copied from another row.

What is bound is what decides whether and what a token is served. Those four columns are
written together with the tokens by every write but one, so binding them costs nothing
there: :data:`PUT_GRANT` (a consent, the clock at start-up) and :data:`FINISH_REFRESH`
(every refresh outcome, refusals included) seal fresh tokens anyway. The one exception is
a state the clock moves (``active`` → ``reconsent_due`` → ``needs_reconsent``, a few times
in a grant's 30 days): :meth:`Store.update_status` then re-seals both tokens in the same
transaction, opening them first (so a tampered row is never laundered into a readable
one). Status updates that leave the state alone, the refresh intent and
``last_served_at`` — the hot paths — bind nothing and seal nothing: they change when and
how often haasd refreshes, never which token is served to whom.

A row that does not open or holds values the schema never writes is *unreadable*: it
loads as a quarantined grant (:func:`quarantined`, in ``needs_reconsent``, never served),
and the row itself is left as it is, as evidence, until a re-consent replaces it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from haasd.crypto import RowValues, Sealer
from haasd.errors import DecryptError
from haasd.grantpack import trusted_grant
from haasd.grants import Grant, RefreshIntent, State
from haasd.secret import Secret
from haasd.store.schema import grant_bound

STATES: Final = {state.value: state for state in State}
#: The start of a quarantined grant's ``last_error``.
UNREADABLE: Final = "store row unreadable"
#: rows read and converted at a time when a store loads every grant: the rows of one
#: chunk take about 2 MB, and a chunk's two thread hops cost nothing beside its rows
LOAD_CHUNK: Final = 2_000
_TOKEN_COLUMNS: Final = ("access_token", "refresh_token")

# Column order of every SELECT below and of grant_row / to_grant.
SELECT_GRANTS: Final = (
    "SELECT human_id, environment, scope, access_token, access_expires_at, refresh_token,"
    " refresh_expires_at, consented_at, last_refresh_at, state, last_error,"
    " consecutive_failures, next_refresh_at, last_served_at,"
    " intent_attempt_id, intent_fingerprint, intent_started_at FROM grants"
)
PUT_GRANT: Final = (
    "INSERT OR REPLACE INTO grants (human_id, environment, scope, access_token,"
    " access_expires_at, refresh_token, refresh_expires_at, consented_at, last_refresh_at,"
    " state, last_error, consecutive_failures, next_refresh_at, last_served_at,"
    " intent_attempt_id, intent_fingerprint, intent_started_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
BEGIN_REFRESH: Final = (
    "UPDATE grants SET intent_attempt_id = ?, intent_fingerprint = ?, intent_started_at = ?"
    " WHERE human_id = ?"
)
# Parameters: refresh_row's.
FINISH_REFRESH: Final = (
    "UPDATE grants SET scope = ?, access_token = ?, access_expires_at = ?, refresh_token = ?,"
    " refresh_expires_at = ?, last_refresh_at = ?, state = ?, last_error = ?,"
    " consecutive_failures = ?, next_refresh_at = ?, intent_attempt_id = NULL,"
    " intent_fingerprint = NULL, intent_started_at = NULL WHERE human_id = ?"
)
SET_STATUS: Final = (
    "UPDATE grants SET state = ?, last_error = ?, consecutive_failures = ?, next_refresh_at = ?"
    " WHERE human_id = ?"
)
SET_STATUS_CLEAR: Final = (
    "UPDATE grants SET state = ?, last_error = ?, consecutive_failures = ?, next_refresh_at = ?,"
    " intent_attempt_id = NULL, intent_fingerprint = NULL, intent_started_at = NULL"
    " WHERE human_id = ?"
)
# Parameters: state, the two re-sealed tokens, then SET_STATUS's from last_error on.
SET_STATE: Final = (
    "UPDATE grants SET state = ?, access_token = ?, refresh_token = ?, last_error = ?,"
    " consecutive_failures = ?, next_refresh_at = ? WHERE human_id = ?"
)
SET_STATE_CLEAR: Final = (
    "UPDATE grants SET state = ?, access_token = ?, refresh_token = ?, last_error = ?,"
    " consecutive_failures = ?, next_refresh_at = ?, intent_attempt_id = NULL,"
    " intent_fingerprint = NULL, intent_started_at = NULL WHERE human_id = ?"
)
# Column order of resealed()'s row.
SELECT_SEALED: Final = (
    "SELECT scope, state, access_token, access_expires_at, refresh_token, refresh_expires_at"
    " FROM grants WHERE human_id = ?"
)
SET_SERVED: Final = (
    "UPDATE grants SET last_served_at = max(coalesce(last_served_at, ?1), ?1) WHERE human_id = ?2"
)


def grant_row(g: Grant, sealer: Sealer) -> tuple[Any, ...]:
    """The parameters of :data:`PUT_GRANT`."""
    scope, state = " ".join(g.scope), State(g.state).value
    access_token, refresh_token = _seal(g, scope, state, sealer)
    intent = g.intent
    return (
        g.human_id,
        g.environment,
        scope,
        access_token,
        g.access_expires_at,
        refresh_token,
        g.refresh_expires_at,
        g.consented_at,
        g.last_refresh_at,
        state,
        g.last_error,
        g.consecutive_failures,
        g.next_refresh_at,
        g.last_served_at,
        intent.attempt_id if intent else None,
        intent.fingerprint if intent else None,
        intent.started_at if intent else None,
    )


def refresh_row(grant: Grant, sealer: Sealer) -> tuple[Any, ...]:
    """The parameters of :data:`FINISH_REFRESH`."""
    scope, state = " ".join(grant.scope), State(grant.state).value
    access_token, refresh_token = _seal(grant, scope, state, sealer)
    return (
        scope,
        access_token,
        grant.access_expires_at,
        refresh_token,
        grant.refresh_expires_at,
        grant.last_refresh_at,
        state,
        grant.last_error,
        grant.consecutive_failures,
        grant.next_refresh_at,
        grant.human_id,
    )


def resealed(
    human_id: str, row: Sequence[Any], state: State, sealer: Sealer
) -> tuple[bytes, bytes] | None:
    """The tokens of a :data:`SELECT_SEALED` row sealed anew for ``state``, or None if the
    state is unchanged (nothing to re-seal). Raises :class:`DecryptError` or
    :class:`ValueError` for an unreadable row."""
    scope, stored, at, at_exp, rt, rt_exp = row
    if stored == state.value:
        return None
    before = grant_bound(scope, stored, at_exp, rt_exp)
    after = grant_bound(scope, state.value, at_exp, rt_exp)
    access, refresh = open_tokens(human_id, at, rt, before, sealer)
    return (
        sealer.seal(access, human_id=human_id, column="access_token", bound=after),
        sealer.seal(refresh, human_id=human_id, column="refresh_token", bound=after),
    )


class UnreadableRowError(Exception):
    """A grant row that does not open or holds what the schema never writes. ``reason``
    says which column and how, never a value (the row may hold anything)."""

    def __init__(self, human_id: str, reason: str) -> None:
        super().__init__(f"{UNREADABLE}: {reason}")
        self.human_id = human_id
        self.reason = reason


def to_grant(
    row: Sequence[Any],
    sealer: Sealer,
    scopes: dict[str, tuple[str, ...]],
    served: Mapping[str, float],
) -> Grant:
    """The grant of a :data:`SELECT_GRANTS` row, or :class:`UnreadableRowError`. ``served``
    holds the ``last_served_at`` times not yet written, ``scopes`` the interned scope
    tuples (see :func:`_scope_tuple`)."""
    (hid, env, scope, at, at_exp, rt, rt_exp, consented, last_refresh, state, error,
     failures, next_refresh, last_served, attempt, fp, started) = row  # fmt: skip
    if not isinstance(hid, str) or not hid:
        raise UnreadableRowError(repr(hid), "human_id is not text")
    try:
        bound = grant_bound(scope, state, at_exp, rt_exp)
        access, refresh = open_tokens(hid, at, rt, bound, sealer)
        pending = served.get(hid)
        if usual(row) and (known := STATES.get(state)) is not None:
            # what haasd writes but for a refresh in flight or failing: checked at once
            return trusted_grant((
                hid, sys.intern(env), _scope_tuple(scopes, scope), Secret(access), at_exp,
                Secret(refresh), rt_exp, consented, last_refresh, known, None, failures,
                next_refresh, latest(last_served, pending), None,
            ))  # fmt: skip
        return Grant(
            human_id=hid,
            environment=sys.intern(_text(env, "environment")),
            scope=_scope_tuple(scopes, scope),
            access_token=Secret(access),
            access_expires_at=_number(at_exp, "access_expires_at"),
            refresh_token=Secret(refresh),
            refresh_expires_at=_number(rt_exp, "refresh_expires_at"),
            consented_at=_number(consented, "consented_at"),
            last_refresh_at=_maybe_number(last_refresh, "last_refresh_at"),
            state=_state(state),
            last_error=None if error is None else _text(error, "last_error"),
            consecutive_failures=_count(failures),
            next_refresh_at=_maybe_number(next_refresh, "next_refresh_at"),
            last_served_at=latest(_maybe_number(last_served, "last_served_at"), pending),
            intent=_intent(attempt, fp, started),
        )
    except (DecryptError, ValueError) as exc:  # ValueError: grant_bound's, ours, Grant's
        raise UnreadableRowError(hid, why_unreadable(exc)) from exc


def to_grants(
    rows: Iterable[Sequence[Any]],
    sealer: Sealer,
    scopes: dict[str, tuple[str, ...]],
    served: Mapping[str, float],
) -> tuple[list[Grant], dict[str, str]]:
    """The grants of :data:`SELECT_GRANTS` rows (of any backend), the quarantined stand-in
    for each unreadable one, and those's reasons by human id (see :func:`to_grant`)."""
    grants: list[Grant] = []
    unreadable: dict[str, str] = {}
    for row in rows:
        try:
            grants.append(to_grant(row, sealer, scopes, served))
        except UnreadableRowError as exc:
            unreadable[exc.human_id] = exc.reason
            grants.append(quarantined(exc.human_id, exc.reason))
    return grants, unreadable


def quarantined(human_id: str, reason: str) -> Grant:
    """What stands for an unreadable row: a grant that needs re-consent, whose tokens are
    empty and expired long ago, and whose ``last_error`` starts with :data:`UNREADABLE`."""
    return Grant(
        human_id=human_id,
        environment="",
        scope=(),
        access_token=Secret(""),
        access_expires_at=0.0,
        refresh_token=Secret(""),
        refresh_expires_at=0.0,
        consented_at=0.0,
        state=State.NEEDS_RECONSENT,
        last_error=unreadable_error(reason),
    )


def unreadable_error(reason: str) -> str:
    """The ``last_error`` of a quarantined grant: :data:`UNREADABLE`, then ``reason``."""
    return f"{UNREADABLE}: {reason}; the human must re-consent"


def why_unreadable(exc: DecryptError | ValueError) -> str:
    """What made a row unreadable: which column and how, never a value (DecryptError's
    and this module's messages name only columns, the human id and key ids)."""
    return str(exc)


def is_placeholder(grant: Grant) -> bool:
    """Whether ``grant`` is (a copy of) a :func:`quarantined` grant: no consent or refresh
    ever gives empty tokens (:mod:`haasd.tokens` refuses them)."""
    return not grant.refresh_token and not grant.access_token


def _seal(grant: Grant, scope: str, state: str, sealer: Sealer) -> tuple[bytes, bytes]:
    hid = grant.human_id
    bound = grant_bound(scope, state, grant.access_expires_at, grant.refresh_expires_at)
    return (
        sealer.seal(grant.access_token.reveal(), human_id=hid, column="access_token", bound=bound),
        sealer.seal(
            grant.refresh_token.reveal(), human_id=hid, column="refresh_token", bound=bound
        ),
    )


def open_tokens(
    hid: str, at: object, rt: object, bound: RowValues, sealer: Sealer
) -> tuple[str, str]:
    if not isinstance(at, bytes):
        raise ValueError("access_token is not a sealed value")
    if not isinstance(rt, bytes):
        raise ValueError("refresh_token is not a sealed value")
    return sealer.open_pair(at, rt, human_id=hid, columns=_TOKEN_COLUMNS, bound=bound)


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} is not text")
    return value


def _number(value: object, name: str) -> float:
    if type(value) is float:  # what SQLite gives a REAL column back as
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} is not a number")
    return float(value)


def _maybe_number(value: object, name: str) -> float | None:
    return None if value is None else _number(value, name)


def latest(stored: float | None, pending: float | None) -> float | None:
    """The later of a stored ``last_served_at`` and one not yet written."""
    return pending if pending is not None and (stored is None or pending > stored) else stored


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("consecutive_failures is not a count")
    return value


def _state(value: object) -> State:
    state = STATES.get(value) if isinstance(value, str) else None
    if state is None:
        raise ValueError("state is not one of " + ", ".join(State))
    return state


def _intent(attempt: object, fp: object, started: object) -> RefreshIntent | None:
    if attempt is None:
        return None
    return RefreshIntent(
        _text(attempt, "intent_attempt_id"),
        _text(fp, "intent_fingerprint"),
        _number(started, "intent_started_at"),
    )


def _scope_tuple(scopes: dict[str, tuple[str, ...]], scope: str) -> tuple[str, ...]:
    """One shared tuple per distinct scope string: 100k grants hold a handful."""
    cached = scopes.get(scope)
    if cached is None:
        cached = scopes[scope] = tuple(scope.split())
    return cached


_FLOAT_OR_NONE: Final = (float, type(None))


def usual(row: Sequence[Any]) -> bool:
    """Whether a row holds what haasd writes for a grant without a refresh in flight or
    failing (every time a float, no error, no intent): no column needs a check of its own."""
    (_, env, _, _, at_exp, _, rt_exp, consented, last_refresh, _, error, failures,
     next_refresh, last_served, attempt, _, _) = row  # fmt: skip
    return (
        type(env) is str
        and type(at_exp) is float
        and type(rt_exp) is float
        and type(consented) is float
        and type(last_refresh) in _FLOAT_OR_NONE
        and type(next_refresh) in _FLOAT_OR_NONE
        and type(last_served) in _FLOAT_OR_NONE
        and failures == 0
        and type(failures) is int
        and error is None
        and attempt is None
    )
