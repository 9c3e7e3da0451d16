"""Pending consents (:mod:`haasd.consent`): the record, the SQL of ``pending_consents``
and its rows. The PKCE verifier is sealed with ``state_id`` in the place of a human id in
the associated data, so a verifier copied to another row does not open."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from haasd.crypto import Sealer
from haasd.secret import Secret

# Columns in PendingRecord's order, the sealed verifier apart.
SELECT_PENDING: Final = (
    "SELECT state_id, scope, human_id, redirect_uri, created_at, expires_at FROM pending_consents"
)
# One statement, so the bound holds however many tasks add at once.
ADD_PENDING: Final = (
    "INSERT INTO pending_consents (code_verifier, state_id, scope, human_id, redirect_uri,"
    " created_at, expires_at) SELECT ?, ?, ?, ?, ?, ?, ?"
    " WHERE (SELECT count(*) FROM pending_consents) < ?"
)
RESTORE_PENDING: Final = (
    "INSERT OR IGNORE INTO pending_consents (code_verifier, state_id, scope, human_id,"
    " redirect_uri, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
TAKE_PENDING: Final = (
    "DELETE FROM pending_consents WHERE state_id = ? RETURNING code_verifier,"
    " state_id, scope, human_id, redirect_uri, created_at, expires_at"
)
TAKE_EXPIRED: Final = (
    "DELETE FROM pending_consents WHERE expires_at <= ? RETURNING"
    " state_id, scope, human_id, redirect_uri, created_at, expires_at"
)
_VERIFIER_COLUMN: Final = "code_verifier"


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """A consent waiting for the human's answer, as stored (see :mod:`haasd.consent`).

    Safe to show and log: the state is only its digest, and the PKCE verifier travels
    apart from the record, as a :class:`~haasd.secret.Secret`.
    """

    #: SHA-256 of the OAuth ``state``, hex
    state_id: str
    scope: tuple[str, ...]
    #: the human named when the consent was started (a re-consent), if any
    human_id: str | None
    redirect_uri: str
    created_at: float
    expires_at: float


def pending_row(record: PendingRecord, verifier: Secret, sealer: Sealer) -> tuple[Any, ...]:
    """The parameters of :data:`RESTORE_PENDING` (and the first ones of :data:`ADD_PENDING`)."""
    sealed = sealer.seal(verifier.reveal(), human_id=record.state_id, column=_VERIFIER_COLUMN)
    return (
        sealed,
        record.state_id,
        " ".join(record.scope),
        record.human_id,
        record.redirect_uri,
        record.created_at,
        record.expires_at,
    )


def to_pending(row: Sequence[Any]) -> PendingRecord:
    """The record of a :data:`SELECT_PENDING` (or :data:`TAKE_EXPIRED`) row."""
    state_id, scope, human_id, redirect_uri, created_at, expires_at = row
    return PendingRecord(
        state_id, tuple(scope.split()), human_id, redirect_uri, created_at, expires_at
    )


def to_taken(row: Sequence[Any], sealer: Sealer) -> tuple[PendingRecord, Secret]:
    """The record and opened verifier of a :data:`TAKE_PENDING` row."""
    blob, *fields = row
    record = to_pending(fields)
    opened = sealer.open(blob, human_id=record.state_id, column=_VERIFIER_COLUMN)
    return record, Secret(opened)
