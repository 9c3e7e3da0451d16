"""The ``grants`` table: its SQL, in one column order, and its rows ↔ :class:`Grant`,
the tokens sealed with the human id and the column name as associated data."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from haasd.crypto import Sealer
from haasd.errors import StoreCorruptError
from haasd.grants import Grant, RefreshIntent, State
from haasd.secret import Secret

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
SET_SERVED: Final = (
    "UPDATE grants SET last_served_at = max(coalesce(last_served_at, ?1), ?1) WHERE human_id = ?2"
)


def grant_row(g: Grant, sealer: Sealer) -> tuple[Any, ...]:
    """The parameters of :data:`PUT_GRANT`."""
    seal = sealer.seal
    intent = g.intent
    return (
        g.human_id,
        g.environment,
        " ".join(g.scope),
        seal(g.access_token.reveal(), human_id=g.human_id, column="access_token"),
        g.access_expires_at,
        seal(g.refresh_token.reveal(), human_id=g.human_id, column="refresh_token"),
        g.refresh_expires_at,
        g.consented_at,
        g.last_refresh_at,
        State(g.state).value,
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
    hid = grant.human_id
    seal = sealer.seal
    return (
        " ".join(grant.scope),
        seal(grant.access_token.reveal(), human_id=hid, column="access_token"),
        grant.access_expires_at,
        seal(grant.refresh_token.reveal(), human_id=hid, column="refresh_token"),
        grant.refresh_expires_at,
        grant.last_refresh_at,
        State(grant.state).value,
        grant.last_error,
        grant.consecutive_failures,
        grant.next_refresh_at,
        hid,
    )


def to_grant(
    row: sqlite3.Row,
    sealer: Sealer,
    scopes: dict[str, tuple[str, ...]],
    served: Mapping[str, float],
    path: Path,
) -> Grant:
    """The grant of a :data:`SELECT_GRANTS` row; ``served`` holds the ``last_served_at``
    times not yet written, ``scopes`` the interned scope tuples (see :func:`_scope_tuple`)."""
    (hid, env, scope, at, at_exp, rt, rt_exp, consented, last_refresh, state, error,
     failures, next_refresh, last_served, attempt, fp, started) = row  # fmt: skip
    open_ = sealer.open
    pending = served.get(hid)
    if pending is not None and (last_served is None or pending > last_served):
        last_served = pending
    try:
        return Grant(
            human_id=hid,
            environment=sys.intern(env),
            scope=_scope_tuple(scopes, scope),
            access_token=Secret(open_(at, human_id=hid, column="access_token")),
            access_expires_at=at_exp,
            refresh_token=Secret(open_(rt, human_id=hid, column="refresh_token")),
            refresh_expires_at=rt_exp,
            consented_at=consented,
            last_refresh_at=last_refresh,
            state=State(state),
            last_error=error,
            consecutive_failures=failures,
            next_refresh_at=next_refresh,
            last_served_at=last_served,
            intent=None if attempt is None else RefreshIntent(attempt, fp, started),
        )
    except (TypeError, ValueError) as exc:
        raise StoreCorruptError(f"store {path}: grant {hid!r} is malformed") from exc


def _scope_tuple(scopes: dict[str, tuple[str, ...]], scope: str) -> tuple[str, ...]:
    """One shared tuple per distinct scope string: 100k grants hold a handful."""
    cached = scopes.get(scope)
    if cached is None:
        cached = scopes[scope] = tuple(scope.split())
    return cached
