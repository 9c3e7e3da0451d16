"""The long full-disk campaign on a SQLite store (root: it mounts a 2 MB tmpfs).

    .venv/bin/python bench/disk_full.py [--rounds 500] [--seed N]

The campaign is the test suite's (``tests/disk_campaign.py``; the short run is in
``tests/test_disk_full.py``), at length: one engine holding six grants against the
simulator with rotation and strict reuse detection; each round the disk fills either
right when a refresh answer is to be written or before the round's refreshes, the clock
passes the refresh points, every token is asked for, and the disk is emptied. It prints
the tally and exits 1 if any promise broke (a dead token served, a refresh token
presented twice, a grant lost, health still degraded once there is space, the store
and memory apart), listing them.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from disk_campaign import DiskTally, campaign
from support_storage import tmpfs

from haasd.logs import configure_logging


async def run(rounds: int, seed: int) -> DiskTally:
    with tmpfs("2m") as disk:
        return await campaign(disk, rounds, seed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    configure_logging("critical", "console", stream=sys.stderr)
    started = time.perf_counter()
    tally = anyio.run(run, args.rounds, seed)
    seconds = time.perf_counter() - started
    print(f"rounds {sum(tally.rounds.values())}, seed {seed}, {seconds:.1f} s")
    for mode, n in sorted(tally.rounds.items()):
        print(f"  disk full {mode}: {n} rounds")
    print(f"  answers held in memory, then written: {tally.held}")
    print(f"  refreshes at the server: {tally.refreshes}")
    print(f"  tokens served: {tally.served}, every one live at the server")
    print(f"  asked for while the disk was full, none in hand: {tally.refused_meanwhile}")
    for problem in tally.problems:
        print(f"BROKEN: {problem}")
    return 1 if tally.problems else 0


if __name__ == "__main__":
    sys.exit(main())
