"""One mapping of SQLite's errors to haasd's, for the store and the maintenance commands."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from haasd.errors import StoreCorruptError, StoreError, StoreLockedError
from haasd.store import store_error_of


def sqlite_error(path: Path, case: str) -> sqlite3.Error:
    """A real error of SQLite's, as it comes from a real file."""
    if case == "not a database":
        path.write_bytes(b"this is no SQLite file, " * 100)
    with closing(sqlite3.connect(path, timeout=0)) as first:
        try:
            if case == "busy":
                first.execute("BEGIN IMMEDIATE")
                with closing(sqlite3.connect(path, timeout=0)) as second:
                    second.execute("BEGIN IMMEDIATE")
            first.execute("SELECT * FROM sqlite_master" if case != "syntax" else "SELEC 1")
        except sqlite3.Error as exc:
            return exc
    raise AssertionError(f"no error for {case}")


@pytest.mark.parametrize(
    ("case", "kind", "says"),
    [
        ("busy", StoreLockedError, "is another haasd using it?"),
        ("not a database", StoreCorruptError, "not a usable haasd store"),
        ("syntax", StoreError, "failed"),
    ],
)
def test_each_sqlite_error_has_one_store_error(
    tmp_path: Path, case: str, kind: type[StoreError], says: str
) -> None:
    db = tmp_path / "haasd.db"
    error = store_error_of(db, "read", sqlite_error(db, case))
    assert type(error) is kind
    assert str(error).startswith(f"store {db}: read failed: ")
    assert says in str(error)
