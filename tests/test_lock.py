"""The instance lock file: never written through a link planted beside the store.

A store directory that another user can write must not let ``haasd run`` (as root)
truncate a file elsewhere: whatever sits at ``<store>.lock`` is refused unless it is a
regular file of haasd's own, and what it points to stays as it was.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from haasd.cli import main
from haasd.errors import StoreError, StoreLockedError
from haasd.store import instance_lock, lock_file_problem

VICTIM = b"root:x:0:0:root:/root:/bin/bash\n"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "haasd.db"


def lock_of(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere" / "passwd"
    path.parent.mkdir()
    path.write_bytes(VICTIM)
    return path


async def test_a_symlink_at_the_lock_path_is_refused_and_its_target_untouched(
    db: Path, victim: Path
) -> None:
    lock_of(db).symlink_to(victim)
    with pytest.raises(StoreError, match="is a symbolic link") as refused:
        async with instance_lock(db):
            pytest.fail("locked through a symlink")
    assert not isinstance(refused.value, StoreLockedError)  # not "another haasd runs"
    assert "Remove it if you trust its directory" in str(refused.value)
    assert victim.read_bytes() == VICTIM


async def test_a_dangling_symlink_creates_nothing_where_it_points(db: Path, tmp_path: Path) -> None:
    target = tmp_path / "created-by-haasd"
    lock_of(db).symlink_to(target)
    with pytest.raises(StoreError, match="symbolic link"):
        async with instance_lock(db):
            pytest.fail("locked through a symlink")
    assert not target.exists()


async def test_a_hard_link_to_another_file_is_refused_and_left_untouched(
    db: Path, victim: Path
) -> None:
    os.link(victim, lock_of(db))
    with pytest.raises(StoreError, match="2 hard links"):
        async with instance_lock(db):
            pytest.fail("locked through a hard link")
    assert victim.read_bytes() == VICTIM


@pytest.mark.parametrize("kind", ["fifo", "directory"])
async def test_a_lock_path_that_is_not_a_regular_file_is_refused(db: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(lock_of(db), 0o600)
    else:
        lock_of(db).mkdir()
    with pytest.raises(StoreError, match="lock file"):
        async with instance_lock(db):
            pytest.fail("locked a " + kind)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
async def test_a_lock_file_of_another_user_is_refused(db: Path) -> None:
    lock_of(db).write_text("4242\n")
    os.chown(lock_of(db), 54321, 54321)
    with pytest.raises(StoreError, match="owned by uid 54321"):
        async with instance_lock(db):
            pytest.fail("locked another user's file")
    assert lock_of(db).read_text() == "4242\n"


async def test_a_fresh_lock_file_is_private_and_an_existing_own_one_is_reused(db: Path) -> None:
    async with instance_lock(db):
        assert lock_of(db).stat().st_mode & 0o777 == 0o600
        assert f"{os.getpid()}\n" == lock_of(db).read_text()
    lock_of(db).write_text("99999999\n")
    async with instance_lock(db):
        assert f"{os.getpid()}\n" == lock_of(db).read_text()


def test_the_lock_file_check_names_each_problem() -> None:
    regular = os.stat_result((0o100600, 0, 0, 1, 1000, 1000, 0, 0, 0, 0))
    assert lock_file_problem(regular, 1000, None) is None
    assert lock_file_problem(regular, 0, 1000) is None  # root, in haasd's own directory
    assert "owned by uid 1000" in str(lock_file_problem(regular, 0, 0))
    linked = os.stat_result((0o100600, 0, 0, 3, 1000, 1000, 0, 0, 0, 0))
    assert "3 hard links" in str(lock_file_problem(linked, 1000, None))
    device = os.stat_result((0o020600, 0, 0, 1, 1000, 1000, 0, 0, 0, 0))
    assert lock_file_problem(device, 1000, None) == "not a regular file"


def test_haasd_run_refuses_a_planted_symlink_in_one_line(tmp_path: Path, victim: Path) -> None:
    """As an operator sees it: ``haasd run`` stops before touching the store."""
    key = tmp_path / "store.key"
    assert main(["keygen", "--out", str(key)]) == 0
    config = tmp_path / "haasd.toml"
    config.write_text(
        '[haas]\nenvironment = "test"\nclient_id = "app_1"\nclient_secret = "test-secret"\n'
        'redirect_uri = "http://127.0.0.1:8765/callback"\n'
        '[store]\npath = "haasd.db"\nkey_file = "store.key"\n[socket]\npath = "s.sock"\n'
    )
    lock_of(tmp_path / "haasd.db").symlink_to(victim)
    done = subprocess.run(
        [sys.executable, "-m", "haasd", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("haasd: the lock file ") and done.stderr.count("\n") == 1
    assert "symbolic link" in done.stderr
    assert victim.read_bytes() == VICTIM
    assert not (tmp_path / "haasd.db").exists()
