"""A store haasd cannot write is refused at start, in one line naming it and why.

The choice, for a demanding operator: a haasd that cannot write its store cannot keep a
single rotated refresh token. Serving "read-only" would look healthy for up to an hour,
then every grant's first rotation would live in memory only, and the next restart — or
the first crash — would lose every human at once. A refusal at start is seen at once by
systemd or the orchestrator, costs nothing at the server, and changes no byte. (A store
that stops taking writes while haasd runs — a disk that fills up — is another matter:
the tokens in hand are served and held until it takes them again, tests/test_disk_full.py.)

Three ways a store is read-only: a read-only mount (root, on a tmpfs of the test's own), a
file of mode 0400, and a directory of mode 0500 where SQLite cannot create its ``-wal``
and ``-shm``. The last two bind root only without ``CAP_DAC_OVERRIDE``: as root, haasd
runs under ``setpriv`` with it dropped, as a service user would meet them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import make_grant
from support_daemon import write_config
from support_storage import remount, tmpfs

from haasd.crypto import Key, Sealer
from haasd.store import Store

SETPRIV = shutil.which("setpriv")
DROP = "--bounding-set=-dac_override,-dac_read_search"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite hands results back through asyncio futures


@pytest.fixture
def disk() -> Iterator[Path]:
    with tmpfs("2m") as path:
        yield path


async def seeded(directory: Path) -> Path:
    """A config and a store holding two grants, closed cleanly (no -wal left)."""
    config = write_config(directory, "http://127.0.0.1:9/token")
    key = Key.from_text((directory / "store.key").read_text())
    async with await Store.open(directory / "haasd.db", Sealer(key)) as store:
        await store.put_grants([make_grant("usr_a"), make_grant("usr_b")])
    return config


def run_haasd(
    config: Path, *, bound_by_modes: bool, command: str = "run"
) -> subprocess.CompletedProcess[str]:
    """``haasd run`` (or ``command``) to its end; ``bound_by_modes``: as root, without
    the capability that lets root write files whatever their mode."""
    argv = [sys.executable, "-m", "haasd", command, "--config", str(config)]
    if bound_by_modes and os.geteuid() == 0:
        if SETPRIV is None:
            pytest.skip("no setpriv(1) to drop root's CAP_DAC_OVERRIDE")
        argv = [SETPRIV, DROP, *argv]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=30, check=False, cwd=config.parent
    )


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def assert_refused_in_one_line(done: subprocess.CompletedProcess[str], *says: str) -> None:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.startswith("haasd: ")]
    assert len(lines) == 1, done.stderr
    for words in says:
        assert words in lines[0], lines[0]
    events = done.stdout + done.stderr
    assert "haasd ready" not in events and "grants loaded" not in events


async def test_a_store_on_a_read_only_mount_is_refused_naming_it(disk: Path) -> None:
    config = await seeded(disk)
    (disk / "haasd.db.lock").touch(mode=0o600)  # as a haasd run before would have left it
    before = files_of(disk)
    remount(disk, "ro")
    try:
        done = run_haasd(config, bound_by_modes=False)
    finally:
        remount(disk, "rw")
    assert_refused_in_one_line(
        done, str(disk / "haasd.db.lock"), "Read-only file system", "the mount"
    )
    assert files_of(disk) == before
    assert not (disk / "haasd.sock").exists()


async def test_a_store_file_of_mode_0400_is_refused_naming_it(short_dir: Path) -> None:
    config = await seeded(short_dir)
    store = short_dir / "haasd.db"
    store.chmod(0o400)
    before = store.read_bytes()
    done = run_haasd(config, bound_by_modes=True)
    assert_refused_in_one_line(done, f"store {store}: ", "read-only", "owner and mode")
    assert store.read_bytes() == before
    assert not (short_dir / "haasd.sock").exists()
    status = run_haasd(config, bound_by_modes=True, command="status")
    assert status.returncode == 0, status.stderr  # a reader reads it as it is
    assert [line.split()[0] for line in status.stdout.splitlines()[1:]] == ["usr_a", "usr_b"]
    assert store.read_bytes() == before
    store.chmod(0o600)  # and once it may be written, haasd takes it as it was
    key = Key.from_text((short_dir / "store.key").read_text())
    async with await Store.open(store, Sealer(key)) as opened:
        assert [g.human_id for g in await opened.list_grants()] == ["usr_a", "usr_b"]


async def test_a_store_directory_of_mode_0500_is_refused_naming_the_store(
    short_dir: Path,
) -> None:
    config = await seeded(short_dir)
    state = short_dir / "state"
    state.mkdir()
    (short_dir / "haasd.db").rename(state / "haasd.db")
    (state / "haasd.db.lock").touch(mode=0o600)  # writable: only the directory is not
    config.write_text(config.read_text().replace('path = "haasd.db"', 'path = "state/haasd.db"'))
    before = (state / "haasd.db").read_bytes()
    state.chmod(0o500)
    try:
        done = run_haasd(config, bound_by_modes=True)
    finally:
        state.chmod(0o700)
    assert_refused_in_one_line(done, f"store {state / 'haasd.db'}: ", "read-only")
    assert (state / "haasd.db").read_bytes() == before
    assert sorted(p.name for p in state.iterdir()) == ["haasd.db", "haasd.db.lock"]
