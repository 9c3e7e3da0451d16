"""The encrypted grant store: SQLite through aiosqlite.

One row per human in ``grants``; the access and refresh tokens are sealed blobs
(:mod:`haasd.crypto`) bound to the row's human id, scope, state and expiries, everything
else is plain. A row that does not open (edited, or a value copied from another row) does
not stop the store: that human is quarantined (``needs_reconsent``, ``last_error``
starting with "store row unreadable", :attr:`Store.unreadable`) and the others load as
ever. Each state change is one transaction, committed with ``synchronous=FULL`` before the
method returns (``last_served_at`` is the exception: see :meth:`Store.mark_served`).

``pending_consents`` holds the consents a human has not answered yet
(:mod:`haasd.consent`): the OAuth ``state`` only as its SHA-256 (``state_id``), the PKCE
verifier sealed with ``state_id`` in the place of a human id in the associated data — so
neither is on disk in the clear, and a verifier copied to another row does not open.

Opening is careful with files that are not ours. An existing file is first read through
an *immutable* read-only connection, which creates and changes nothing (not even the
``-wal``/``-shm``): a file that is not SQLite, not a haasd store, written by a newer
haasd, or sealed with another key is refused while it is still byte-identical. Only then
is it opened read-write, checked again, ``quick_check``-ed and migrated.

The modules: :mod:`haasd.store.schema` (public: what is on disk — migrations,
application id, key check, the sealed columns that ``haasd rekey`` re-seals), ``_open``
(opening a file), ``_grants`` and ``_pending`` (their tables' SQL and rows), ``_sqlite``
(error translation, transactions), ``_lock`` (:func:`instance_lock`: one haasd per store)
and ``_store`` (:class:`Store`).
"""

from haasd.store._lock import instance_lock, lock_file_problem
from haasd.store._pending import PendingRecord
from haasd.store._sqlite import store_error_of
from haasd.store._store import Store

__all__ = ["PendingRecord", "Store", "instance_lock", "lock_file_problem", "store_error_of"]
