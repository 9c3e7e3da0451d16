"""Time `haasd rekey`, `backup` and `restore` on a store of N grants.

    .venv/bin/python bench/maintenance.py [--grants 10000]

Builds a real encrypted store in a temporary directory, then runs the same functions
the commands run (re-seal a copy under a new key and swap it in; an online copy through
SQLite's backup API; a key-checked restore) and prints the wall time of each.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import anyio

from haasd.crypto import Key, Sealer
from haasd.grants import Grant
from haasd.maintenance import backup_store, rekey_store, restore_store
from haasd.secret import Secret
from haasd.store import Store


async def build(path: Path, sealer: Sealer, count: int) -> None:
    now = time.time()
    rng = random.Random(1)
    async with await Store.open(path, sealer) as store:
        for start in range(0, count, 5000):
            await store.put_grants(
                Grant(
                    human_id=f"usr_bench_{i}",
                    environment="test",
                    scope=("tasks:dispatch", "status:read"),
                    access_token=Secret(f"haas_at_bench{i:08d}{rng.getrandbits(64):016x}"),
                    access_expires_at=now + 3600,
                    refresh_token=Secret(f"haas_rt_bench{i:08d}{rng.getrandbits(64):016x}"),
                    refresh_expires_at=now + 30 * 86400,
                    consented_at=now,
                )
                for i in range(start, min(count, start + 5000))
            )


def report(what: str, started: float) -> None:
    print(f"{what:<52}{time.perf_counter() - started:6.2f} s")


async def main(count: int) -> None:
    print("haasd maintenance benchmark")
    print(f"reproduce: .venv/bin/python bench/maintenance.py --grants {count}")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="haasd-bench-") as tmp:
        path = Path(tmp) / "haasd.db"
        old, new = Sealer(Key.generate()), Sealer(Key.generate())
        await build(path, old, count)
        print(f"store: {count:,} grants, {path.stat().st_size / 1e6:.1f} MB")
        started = time.perf_counter()
        await rekey_store(path, old, new)
        report("rekey   (re-seal a copy, verify every token, swap)", started)
        copy = Path(tmp) / "backup.db"
        started = time.perf_counter()
        backup_store(path, copy)
        report("backup  (online copy, quick_check)", started)
        started = time.perf_counter()
        await restore_store(path, copy, new)
        report("restore (key check, every token, swap)", started)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grants", type=int, default=10_000)
    anyio.run(main, parser.parse_args().grants)
