"""What a haasd store is in PostgreSQL: its migrations and its statements.

The columns are SQLite's (:mod:`haasd.store.schema`) in PostgreSQL's types — ``bytea``
for a sealed value, ``double precision`` for a time — so that :mod:`haasd.store._grants`
turns rows into grants, and grants into sealed rows, the same way for both backends.
"""

# Every statement is built from constant column lists; values only ever pass as parameters.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

#: the ``pg_advisory_lock`` key under which one instance migrates ("HAAS" as in SQLite's
#: application id, then "MIGR")
MIGRATION_LOCK: Final = 0x48414153_4D494752
#: the transaction-level advisory lock that bounds the pending consents across instances
PENDING_LOCK: Final = 0x48414153_50454E44

#: the transaction-level advisory lock under which the cluster's rate budget is spent
RATE_LOCK: Final = 0x48414153_52415445

# What makes a new version of a grant (all but the served time), and what the other
# instances must re-read (all but the served time and the refresher's intent).
_NOTIFIED: Final = (
    "environment", "scope", "access_token", "access_expires_at", "refresh_token",
    "refresh_expires_at", "consented_at", "last_refresh_at", "state", "last_error",
    "consecutive_failures", "next_refresh_at",
)  # fmt: skip
_CHANGING: Final = (*_NOTIFIED, "intent_attempt_id", "intent_fingerprint", "intent_started_at")
_CHANGING_OLD: Final = ", ".join(f"OLD.{c}" for c in _CHANGING)
_CHANGING_NEW: Final = ", ".join(f"NEW.{c}" for c in _CHANGING)
_NOTIFIED_OLD: Final = ", ".join(f"OLD.{c}" for c in _NOTIFIED)
_NOTIFIED_NEW: Final = ", ".join(f"NEW.{c}" for c in _NOTIFIED)

# Migration N (0-based) takes the schema from version N to N + 1, in one transaction
# that also records it in haasd_schema.
MIGRATIONS: Final[Sequence[tuple[str, ...]]] = (
    (
        "CREATE TABLE haasd_schema (version INTEGER PRIMARY KEY,"
        " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        "CREATE TABLE haasd_meta (name TEXT PRIMARY KEY, value BYTEA NOT NULL)",
        """CREATE TABLE grants (
            human_id TEXT PRIMARY KEY,
            environment TEXT NOT NULL,
            scope TEXT NOT NULL,
            access_token BYTEA NOT NULL,
            access_expires_at DOUBLE PRECISION NOT NULL,
            refresh_token BYTEA NOT NULL,
            refresh_expires_at DOUBLE PRECISION NOT NULL,
            consented_at DOUBLE PRECISION NOT NULL,
            last_refresh_at DOUBLE PRECISION,
            state TEXT NOT NULL
                CHECK (state IN ('active', 'reconsent_due', 'needs_reconsent')),
            last_error TEXT,
            consecutive_failures INTEGER NOT NULL DEFAULT 0,
            next_refresh_at DOUBLE PRECISION,
            last_served_at DOUBLE PRECISION,
            intent_attempt_id TEXT,
            intent_fingerprint TEXT,
            intent_started_at DOUBLE PRECISION
        )""",
        """CREATE TABLE pending_consents (
            state_id TEXT PRIMARY KEY,
            code_verifier BYTEA NOT NULL,
            scope TEXT NOT NULL,
            human_id TEXT,
            redirect_uri TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX pending_consents_by_expiry ON pending_consents (expires_at)",
    ),
    (
        # Several instances on one store (haasd.pgstore._coordination). A grant's version
        # comes from one sequence, so a grant deleted and consented again never repeats
        # one; a trigger gives every change a new version — except a served time alone —
        # and tells the listening instances (NOTIFY haasd_grants, "human_id version").
        "CREATE SEQUENCE haasd_grant_version",
        "ALTER TABLE grants ADD COLUMN version BIGINT NOT NULL"
        " DEFAULT nextval('haasd_grant_version')",
        f"""CREATE FUNCTION haasd_grant_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'UPDATE' AND ROW({_CHANGING_OLD}) IS NOT DISTINCT FROM
                    ROW({_CHANGING_NEW}) THEN
                RETURN NEW;
            END IF;
            NEW.version := nextval('haasd_grant_version');
            RETURN NEW;
        END $$""",
        """CREATE FUNCTION haasd_grant_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('haasd_grants', OLD.human_id || ' 0');
            ELSE
                PERFORM pg_notify('haasd_grants', NEW.human_id || ' ' || NEW.version);
            END IF;
            RETURN NULL;
        END $$""",
        "CREATE TRIGGER grants_version BEFORE INSERT OR UPDATE ON grants"
        " FOR EACH ROW EXECUTE FUNCTION haasd_grant_changed()",
        # an intent alone is the refresher's own business: others need not re-read
        "CREATE TRIGGER grants_notify AFTER INSERT OR DELETE ON grants"
        " FOR EACH ROW EXECUTE FUNCTION haasd_grant_notify()",
        f"""CREATE TRIGGER grants_notify_update AFTER UPDATE ON grants FOR EACH ROW
        WHEN (ROW({_NOTIFIED_OLD}) IS DISTINCT FROM ROW({_NOTIFIED_NEW}))
        EXECUTE FUNCTION haasd_grant_notify()""",
        """CREATE TABLE haasd_instances (
            instance_id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            expires_at TIMESTAMPTZ NOT NULL
        )""",
        """CREATE TABLE haasd_leases (
            human_id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            expires_at TIMESTAMPTZ NOT NULL
        )""",
        "CREATE INDEX haasd_leases_by_owner ON haasd_leases (owner)",
        # the cluster's one rate budget: a log of the sends of the last minute, and what
        # the server said (a Retry-After, a lower limit), under one advisory lock
        "CREATE TABLE haasd_rate_log (at TIMESTAMPTZ NOT NULL)",
        "CREATE INDEX haasd_rate_log_by_time ON haasd_rate_log (at)",
        """CREATE TABLE haasd_rate_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            blocked_until TIMESTAMPTZ
        )""",
        "INSERT INTO haasd_rate_state (id) VALUES (1)",
        f"""CREATE FUNCTION haasd_take_rate(capacity INTEGER) RETURNS DOUBLE PRECISION
        LANGUAGE plpgsql AS $$
        DECLARE
            blocked TIMESTAMPTZ;
            used INTEGER;
            oldest TIMESTAMPTZ;
        BEGIN
            PERFORM pg_advisory_xact_lock({RATE_LOCK});
            DELETE FROM haasd_rate_log WHERE at <= clock_timestamp() - interval '60 s';
            SELECT blocked_until INTO blocked FROM haasd_rate_state WHERE id = 1;
            IF blocked IS NOT NULL AND blocked > clock_timestamp() THEN
                RETURN extract(epoch FROM blocked - clock_timestamp());
            END IF;
            SELECT count(*), min(at) INTO used, oldest FROM haasd_rate_log;
            IF used >= capacity THEN
                RETURN greatest(0.001,
                    extract(epoch FROM oldest + interval '60 s' - clock_timestamp()));
            END IF;
            INSERT INTO haasd_rate_log (at) VALUES (clock_timestamp());
            RETURN 0;
        END $$""",
    ),
)

SCHEMA_EXISTS: Final = "SELECT to_regclass('haasd_schema') IS NOT NULL"
SCHEMA_VERSION: Final = "SELECT coalesce(max(version), 0) FROM haasd_schema"
RECORD_VERSION: Final = "INSERT INTO haasd_schema (version) VALUES (%s)"
SELECT_META: Final = "SELECT value FROM haasd_meta WHERE name = %s"
INSERT_META: Final = "INSERT INTO haasd_meta (name, value) VALUES (%s, %s)"

_GRANT_COLUMNS: Final = (
    "human_id, environment, scope, access_token, access_expires_at, refresh_token,"
    " refresh_expires_at, consented_at, last_refresh_at, state, last_error,"
    " consecutive_failures, next_refresh_at, last_served_at,"
    " intent_attempt_id, intent_fingerprint, intent_started_at"
)
# Column order of haasd.store._grants.to_grant's rows.
SELECT_GRANTS: Final = f"SELECT {_GRANT_COLUMNS} FROM grants"
# The same, with the row's version last (split off before the row becomes a grant).
SELECT_VERSIONED: Final = f"SELECT {_GRANT_COLUMNS}, version FROM grants"
# Parameters: haasd.store._grants.grant_row's.
PUT_GRANT: Final = (
    f"INSERT INTO grants ({_GRANT_COLUMNS}) VALUES ({', '.join(['%s'] * 17)})"
    " ON CONFLICT (human_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _GRANT_COLUMNS.split(", ")[1:])
    + " RETURNING version"
)
BEGIN_REFRESH: Final = (
    "UPDATE grants SET intent_attempt_id = %s, intent_fingerprint = %s,"
    " intent_started_at = %s WHERE human_id = %s"
)
# Parameters: haasd.store._grants.refresh_row's (the human id last).
FINISH_REFRESH: Final = (
    "UPDATE grants SET scope = %s, access_token = %s, access_expires_at = %s,"
    " refresh_token = %s, refresh_expires_at = %s, last_refresh_at = %s, state = %s,"
    " last_error = %s, consecutive_failures = %s, next_refresh_at = %s,"
    " intent_attempt_id = NULL, intent_fingerprint = NULL, intent_started_at = NULL"
    " WHERE human_id = %s"
)
# The fenced finish: only while the row still carries the refresh's intent.
FINISH_FENCED: Final = f"{FINISH_REFRESH} AND intent_attempt_id = %s RETURNING version"
# Beginning a refresh in a cluster: only on the version this instance read, and only
# while this instance holds the grant's lease by the database's clock.
BEGIN_LEASED: Final = (
    f"{BEGIN_REFRESH} AND version = %s AND EXISTS (SELECT 1 FROM haasd_leases AS l"
    " WHERE l.human_id = grants.human_id AND l.owner = %s AND l.expires_at > now())"
    " RETURNING version"
)
_CLEAR_INTENT: Final = (
    ", intent_attempt_id = NULL, intent_fingerprint = NULL, intent_started_at = NULL"
)
_STATUS: Final = "last_error = %s, consecutive_failures = %s, next_refresh_at = %s"
SET_STATUS: Final = (
    f"UPDATE grants SET state = %s, {_STATUS}{{}} WHERE human_id = %s RETURNING version"
)
SET_STATE: Final = (
    f"UPDATE grants SET state = %s, access_token = %s, refresh_token = %s, {_STATUS}{{}}"
    " WHERE human_id = %s RETURNING version"
)
SELECT_SEALED: Final = (
    "SELECT scope, state, access_token, access_expires_at, refresh_token,"
    " refresh_expires_at FROM grants WHERE human_id = %s FOR UPDATE"
)
# All the served times in one statement: two arrays, human ids and times.
SET_SERVED: Final = (
    "UPDATE grants AS g SET last_served_at = greatest(coalesce(g.last_served_at, v.at), v.at)"
    " FROM unnest(%s::text[], %s::double precision[]) AS v (human_id, at)"
    " WHERE g.human_id = v.human_id"
)


def status_sql(template: str, *, clear_intent: bool) -> str:
    """:data:`SET_STATUS` or :data:`SET_STATE`, clearing the intent or not."""
    return template.format(_CLEAR_INTENT if clear_intent else "")


_PENDING_COLUMNS: Final = "state_id, scope, human_id, redirect_uri, created_at, expires_at"
_PENDING_INSERT: Final = (
    "INSERT INTO pending_consents (code_verifier, state_id, scope, human_id, redirect_uri,"
    " created_at, expires_at)"
)
SELECT_PENDING: Final = f"SELECT {_PENDING_COLUMNS} FROM pending_consents"
# Under PENDING_LOCK, so that the bound holds however many instances add at once.
ADD_PENDING: Final = (
    f"{_PENDING_INSERT} SELECT %s, %s, %s, %s, %s, %s, %s"
    " WHERE (SELECT count(*) FROM pending_consents) < %s"
)
RESTORE_PENDING: Final = (
    f"{_PENDING_INSERT} VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (state_id) DO NOTHING"
)
TAKE_PENDING: Final = (
    f"DELETE FROM pending_consents WHERE state_id = %s RETURNING code_verifier, {_PENDING_COLUMNS}"
)
TAKE_EXPIRED: Final = (
    f"DELETE FROM pending_consents WHERE expires_at <= %s RETURNING {_PENDING_COLUMNS}"
)
