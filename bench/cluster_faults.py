"""The long fault campaign: 3 ``haasd run`` processes on one PostgreSQL store, ≥ 200
``kill -9``s, pauses past the lease and database restarts, in both reuse modes.

    .venv/bin/python bench/cluster_faults.py [--kills 200] [--stops 10] [--pg-restarts 10]
                                              [--seed N] [--modes grace,strict]
                                              [--overlap]

The campaign is the test suite's (``tests/cluster_campaign.py``; the short run is
``tests/test_cluster_faults.py``), at length: the simulator with rotation and reuse
detection issues tokens of a few seconds, so every grant is refreshed every few seconds
of real time; faults strike at seeded random moments. It needs the PostgreSQL server
binaries (a throwaway cluster of its own, as the tests start). It prints one column per
mode and exits 1 if either mode found a problem (listed below the table); then the
instances' logs and the driver's records (``records.json``: faults, spent tokens
presented again, dead tokens served) stay in the directory it names.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cluster_campaign import Campaign
from cluster_result import Plan, Result
from pg_cluster import PgCluster, PgUnavailable

from haasd.logs import configure_logging

GRACE = {"grace": 30.0, "strict": 0.0}


def run(plan: Plan, pg: PgCluster) -> Result:
    database = pg.new_database()
    base = Path(tempfile.mkdtemp(prefix="hdcf", dir="/tmp"))
    keep = True  # a campaign that fails midway leaves its logs for a look
    try:
        result = anyio.run(Campaign(plan, pg, database, base).run)
        keep = bool(result.problems())
        if keep:
            keep_records(result, base)
        return result
    finally:
        if keep:
            print(f"the instances' logs and the records are in {base}", flush=True)
        else:
            shutil.rmtree(base, ignore_errors=True)
        pg.start()
        pg.drop_database(database.name)


def keep_records(result: Result, base: Path) -> None:
    """What the driver saw, for a look at a problem beside the instances' logs."""
    records = {
        "faults": [fault.__dict__ | {"leases": sorted(fault.leases)} for fault in result.faults],
        "spent": [spent._asdict() for spent in result.spent],
        "dead_served": result.served.dead,
        "lost": result.lost,
        "failed_starts": result.failed_starts,
        "no_start": result.no_start,
        "losses": [loss.__dict__ for loss in result.losses],
        "problems": result.problems(),
    }
    (base / "records.json").write_text(json.dumps(records, indent=1, default=str))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--stops", type=int, default=10)
    parser.add_argument("--pg-restarts", type=int, default=10)
    parser.add_argument("--humans", type=int, default=12)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--modes", default="grace,strict")
    parser.add_argument(
        "--overlap", action="store_true",
        help="start a killed instance again without waiting for it: faults overlap",
    )  # fmt: skip
    args = parser.parse_args()
    configure_logging("error", "console", stream=sys.stderr)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    print(f"seed {seed} (--seed {seed} repeats the choices)", flush=True)
    try:
        pg = PgCluster.create()
    except PgUnavailable as exc:
        print(f"skipped: {exc}")
        return 2
    results = []
    try:
        pg.start()
        for mode in args.modes.split(","):
            plan = Plan(
                seed=seed, grace=GRACE[mode], kills=args.kills, stops=args.stops,
                pg_restarts=args.pg_restarts, humans=args.humans, overlap=args.overlap,
            )  # fmt: skip
            print(f"{mode}: {args.kills} kills, {args.stops} pauses, {args.pg_restarts}"
                  " database restarts ...", flush=True)  # fmt: skip
            results.append((mode, run(plan, pg)))
    finally:
        pg.destroy()
    print_table(results)
    return 1 if any(result.problems() for _, result in results) else 0


def print_table(results: list[tuple[str, Result]]) -> None:
    names = [name for name, _ in results[0][1].rows()]
    width = max(len(n) for n in names)
    print(f"\n{'':<{width}}  " + "  ".join(f"{mode:>12}" for mode, _ in results))
    for i, name in enumerate(names):
        values = "  ".join(f"{result.rows()[i][1]:>12}" for _, result in results)
        print(f"{name:<{width}}  {values}")
    for mode, result in results:
        for problem in result.problems():
            print(f"PROBLEM ({mode}): {problem}")


if __name__ == "__main__":
    sys.exit(main())
