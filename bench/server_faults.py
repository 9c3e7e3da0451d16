"""The server-fault table (tests/test_server_faults_*.py) run over many seeds of haasd's
jitter and backoff: do the rows hold whatever the dice say, and what do the ranges look
like?

    .venv/bin/python bench/server_faults.py --seeds 20
    .venv/bin/python bench/server_faults.py --seeds 20 --first-seed 1 --json

The test command runs every row once, with one seed; here each row runs once per seed
(1 … ``--seeds``, or from ``--first-seed``). A run that differs from its row, or that
breaks an invariant of the rig (a served token the server does not honour, a redirect
followed), is a failure and is printed with its seed; a grant left needing re-consent
where the row expected it kept is counted as lost. The exit status is 1 if any run
failed. Printed per row: runs, failures, and the least and most further requests seen.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fault_rig import Row, expected, run_row
from test_server_faults_answers import ROWS as ANSWERS
from test_server_faults_bodies import ROWS as BODIES

from haasd.logs import configure_logging


@dataclass
class Tally:
    runs: int = 0
    failures: list[str] = field(default_factory=list)
    lost: int = 0
    further: list[int] = field(default_factory=list)


async def run_one(row: Row, seed: int, tally: Tally) -> None:
    directory = Path(tempfile.mkdtemp(prefix="hsf", dir="/tmp"))  # short: AF_UNIX paths
    tally.runs += 1
    try:
        seen, _ = await run_row(row, directory, seed=seed)
    except Exception as exc:  # noqa: BLE001 - an invariant broke: report it, go on
        tally.failures.append(f"seed {seed}: {type(exc).__name__}: {exc}")
        return
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    tally.further.append(seen.further)
    if seen != expected(row, seen):
        tally.failures.append(f"seed {seed}: {seen}")
    if seen.state == "needs_reconsent" and row.state != "needs_reconsent":
        tally.lost += 1


async def main(seeds: range) -> dict[str, Tally]:
    tallies: dict[str, Tally] = {}
    for row in [*ANSWERS, *BODIES]:
        tally = tallies.setdefault(row.name, Tally())
        for seed in seeds:
            await run_one(row, seed, tally)
    return tallies


def report(tallies: dict[str, Tally], seconds: float, as_json: bool) -> int:
    runs = sum(t.runs for t in tallies.values())
    failed = sum(len(t.failures) for t in tallies.values())
    lost = sum(t.lost for t in tallies.values())
    if as_json:
        rows = {
            name: {
                "runs": t.runs,
                "failures": t.failures,
                "lost": t.lost,
                "further": [min(t.further, default=0), max(t.further, default=0)],
            }
            for name, t in tallies.items()
        }
        summary = {"rows": len(tallies), "runs": runs, "failed": failed, "lost": lost}
        print(json.dumps({**summary, "seconds": round(seconds, 1), "by_row": rows}, indent=1))
    else:
        for name, t in tallies.items():
            low, high = min(t.further, default=0), max(t.further, default=0)
            print(f"{name:58} runs {t.runs:4}  failed {len(t.failures):3}  further {low}-{high}")
            for failure in t.failures[:3]:
                print(f"    {failure}")
        print(f"{len(tallies)} fault kinds, {runs} runs, {failed} failed, {lost} grants lost, "
              f"{seconds:.0f} s")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="runs per row (default 20)")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="the figures as JSON")
    args = parser.parse_args()
    configure_logging("critical", "console", stream=sys.stderr)
    started = time.monotonic()
    result = anyio.run(main, range(args.first_seed, args.first_seed + args.seeds))
    sys.exit(report(result, time.monotonic() - started, args.json))
