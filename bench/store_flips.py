"""The long flipped-bits campaign on a SQLite store.

    .venv/bin/python bench/store_flips.py [--flips 10000] [--seed N]

The campaign is the test suite's (``tests/flip_campaign.py``; the short run is
``tests/test_store_flips.py``), at length: each trial flips one bit of a store of four
grants — in a sealed token or the key check, in a human id or a scope (table and index),
in the SQLite header, or anywhere, in turn — and opens it as ``haasd run`` would. It
prints the outcomes per region and what the refusals said, and exits 1 if any trial
broke a promise (a traceback, a refusal that names no file, a readable grant whose
tokens, scope, expiries or state differ from what was stored), listing them.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from flip_campaign import REGIONS, Tally, campaign

from haasd.logs import configure_logging

OUTCOMES = ("intact", "quarantined", "refused", "wrong", "traceback")


def report(tally: Tally, seed: int, seconds: float) -> None:
    print(f"flips {tally.trials}, seed {seed}, {seconds:.1f} s")
    print(f"{'region':<10}" + "".join(f"{o:>13}" for o in OUTCOMES))
    for region in REGIONS:
        counts = [tally.outcomes[(region, o)] for o in OUTCOMES]
        print(f"{region:<10}" + "".join(f"{n:>13}" for n in counts))
    print("refusals:")
    for said, n in tally.refusals.most_common(12):
        print(f"  {n:>6}  {said}")
    for failure in tally.failures:
        print(f"BROKEN: {failure}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flips", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    configure_logging("error", "console", stream=sys.stderr)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flips") as directory:
        tally = anyio.run(campaign, Path(directory), args.flips, seed)
    report(tally, seed, time.perf_counter() - started)
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
