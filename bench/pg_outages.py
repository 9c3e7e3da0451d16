"""The long PostgreSQL outage campaign: one haasd, outages in the middle of refreshes.

    .venv/bin/python bench/pg_outages.py [--rounds 20] [--seed N]

The campaign is the test suite's (``tests/pg_outage_campaign.py``; the short run is
``tests/test_pg_outages.py``), at length, on a throwaway cluster of eight slots of its
own: each round one human's refresh is at the server while the database is stopped or
every slot is taken, every grant comes due meanwhile, and the database comes back 1 to
4 s later. It needs the PostgreSQL server binaries. It prints the tally and exits 1 if
any promise broke (a rotation lost, a spent token presented, a token not served or
dead, a refresh sent while the store was out, health wrong), listing them.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pg_cluster import PgCluster
from pg_outage_campaign import SLOTS, OutageTally, campaign

from haasd.logs import configure_logging


async def run(rounds: int, seed: int) -> OutageTally:
    cluster = PgCluster.create(settings=(f"max_connections={SLOTS}",))
    directory = Path(tempfile.mkdtemp(prefix="hdo", dir="/tmp"))
    try:
        cluster.start()
        database = cluster.new_database()
        return await campaign(directory, cluster, database, rounds, seed)
    finally:
        cluster.destroy()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    configure_logging("critical", "console", stream=sys.stderr)
    started = time.perf_counter()
    tally = anyio.run(run, args.rounds, seed)
    print(
        f"rounds {sum(tally.rounds.values())}, seed {seed}, {time.perf_counter() - started:.0f} s"
    )
    for mode, n in sorted(tally.rounds.items()):
        print(f"  database {mode} mid-refresh: {n} rounds")
    print(f"  refreshes at the server: {tally.refreshes}")
    for problem in tally.problems:
        print(f"BROKEN: {problem}")
    return 1 if tally.problems else 0


if __name__ == "__main__":
    sys.exit(main())
