"""The long crash campaign: one ``haasd run`` process on a SQLite store, ≥ 1,000 SIGKILLs at
random moments and injected points, in both reuse modes.

    .venv/bin/python bench/crash_faults.py [--kills 1000] [--seed N] [--humans 10]
                                             [--modes grace,strict]

The campaign is the test suite's (``tests/crash_campaign.py``; the short run is
``tests/test_crash_campaign.py``), at length: the simulator with rotation and reuse
detection issues tokens of 6 s, so every grant is refreshed every 3 s of real time;
haasd is killed at random moments, before a refresh's request is sent, after it is sent,
after its answer arrived, inside the write of the rotated tokens, around a consent's code
exchange, and inside ``haasd rekey`` and ``haasd restore``. It prints one column per mode
and exits 1 if either mode found a problem (listed below the table); then haasd's logs
and the driver's records (``records.json``: kills, spent tokens presented again, dead
tokens served, losses) stay in the directory it names.
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

from crash_campaign import Campaign, Plan
from crash_result import Result

from haasd.logs import configure_logging

GRACE = {"grace": 30.0, "strict": 0.0}


def run(plan: Plan) -> Result:
    base = Path(tempfile.mkdtemp(prefix="hdcc"))
    keep = True  # a campaign that fails midway leaves its logs for a look
    try:
        result = anyio.run(Campaign(plan, base).run)
        keep = bool(result.problems())
        if keep:
            keep_records(result, base)
        return result
    finally:
        if keep:
            print(f"haasd's logs and the records are in {base}", flush=True)
        else:
            shutil.rmtree(base, ignore_errors=True)


def keep_records(result: Result, base: Path) -> None:
    records = {
        "kills": [kill.__dict__ for kill in result.kills],
        "spent": [spent._asdict() for spent in result.spent],
        "dead_served": result.served.dead,
        "lost": [lost.__dict__ for lost in result.lost],
        "problems": result.problems(),
    }
    (base / "records.json").write_text(json.dumps(records, indent=1, default=str))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--humans", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--modes", default="grace,strict")
    args = parser.parse_args()
    configure_logging("error", "console", stream=sys.stderr)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    print(f"seed {seed} (--seed {seed} repeats the choices)", flush=True)
    results = []
    for mode in args.modes.split(","):
        plan = Plan(seed=seed, grace=GRACE[mode], kills=args.kills, humans=args.humans)
        print(f"{mode}: {args.kills} kills ...", flush=True)
        results.append((mode, run(plan)))
    print_table(results)
    return 1 if any(result.problems() for _, result in results) else 0


def print_table(results: list[tuple[str, Result]]) -> None:
    names: list[str] = []
    for _, result in results:
        names += [name for name, _ in result.rows() if name not in names]
    width = max(len(n) for n in names)
    print(f"\n{'':<{width}}  " + "  ".join(f"{mode:>16}" for mode, _ in results))
    for name in names:
        values = "  ".join(f"{dict(result.rows()).get(name, '0'):>16}" for _, result in results)
        print(f"{name:<{width}}  {values}")
    for mode, result in results:
        for problem in result.problems():
            print(f"PROBLEM ({mode}): {problem}")


if __name__ == "__main__":
    sys.exit(main())
