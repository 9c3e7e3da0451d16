"""A restore cut off between removing the store's -wal and renaming the backup over the
store leaves the store whole (found by the crash campaign, tests/crash_campaign.py).

haasd killed (a crash) leaves its last writes in the -wal; the operator then restores a
backup. Before, the restore removed that -wal first, so a crash right after left the
store's own file without the writes it held: neither the store nor the backup.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest
from factories import make_grant

from haasd.crypto import Key, Sealer
from haasd.maintenance import backup_store, restore_store
from haasd.secret import Secret
from haasd.store import Store

# A haasd that writes a rotated refresh token and dies before any checkpoint.
KILLED_WRITER = """
import os, sys, anyio
from dataclasses import replace
from pathlib import Path
from haasd.crypto import Key, Sealer
from haasd.secret import Secret
from haasd.store import Store

async def main() -> None:
    store = await Store.open(Path(sys.argv[1]), Sealer(Key.from_text(os.environ["KEY"])))
    grant = await store.get_grant("usr_a")
    await store.put_grant(replace(grant, refresh_token=Secret("haas_rt_rotated")))
    os._exit(137)

anyio.run(main)
"""


class Killed(BaseException):
    """The restore's process dies here."""


async def test_a_restore_killed_before_its_rename_keeps_the_killed_haasds_last_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, backup = tmp_path / "haasd.db", tmp_path / "backup.db"
    key = Key.generate()
    original = make_grant("usr_a")
    async with await Store.open(store, Sealer(key)) as opened:
        await opened.put_grant(original)
    backup_store(store, backup)
    written = await anyio.run_process(
        [sys.executable, "-c", KILLED_WRITER, str(store)],
        env={**os.environ, "KEY": key.to_text()},
        check=False,
    )
    assert written.returncode == 137, written.stderr
    assert store.with_name("haasd.db-wal").stat().st_size > 0, "the write is in the -wal"

    def killed(*args: object) -> None:
        raise Killed

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(Killed):
        await restore_store(store, backup, Sealer(key))
    monkeypatch.undo()

    async with await Store.open(store, Sealer(key)) as opened:
        grant = await opened.get_grant("usr_a")
    assert grant.refresh_token == Secret("haas_rt_rotated"), "the store as haasd left it"
    # and the restore, run again, puts the backup in place
    await restore_store(store, backup, Sealer(key))
    async with await Store.open(store, Sealer(key)) as opened:
        restored = await opened.get_grant("usr_a")
    assert restored.refresh_token == original.refresh_token
