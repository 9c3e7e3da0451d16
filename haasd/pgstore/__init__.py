"""The grant store on PostgreSQL, shared by several haasd instances: psycopg 3 and its pool.

The same :class:`~haasd.grantstore.GrantStore` promises as the SQLite store, and the same
rows: the tokens are sealed by :mod:`haasd.store._grants` with the same associated data
(human id, column, scope, state, expiries), so PostgreSQL only ever holds ciphertext, and
every instance must hold the same key — one with another key refuses to start, writing
nothing (:mod:`haasd.pgstore._open`). The schema is migrated by one instance at a time
under an advisory lock. A refresh's result is written by one statement fenced on its
intent (``WHERE human_id = $1 AND intent_attempt_id = $2``); a pending consent is taken
by ``DELETE ... RETURNING``; served times are flushed in one statement. Every statement
runs in a bounded pool, under a timeout, shielded from cancellation, and fails as a
:class:`~haasd.errors.StoreError` naming the database (never its password).

The modules: ``_sql`` (the migrations and statements), ``_database`` (the pool),
``_open`` (key check and migrations) and ``_store`` (:class:`PgStore`).
"""

from haasd.pgstore._coordination import PgCoordination
from haasd.pgstore._database import describe
from haasd.pgstore._rate import PgRate
from haasd.pgstore._store import PgStore

__all__ = ["PgCoordination", "PgRate", "PgStore", "describe"]
