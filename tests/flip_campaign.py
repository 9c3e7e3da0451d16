"""Flipped bits in a store file, many times over: every flip either makes haasd refuse
the file naming it, or quarantine the humans whose rows it touched, or changes nothing
that is served — never a traceback, never a token other than the one stored.

A store of a few grants is written and closed cleanly (everything in the main file, no
``-wal``); each trial copies it, flips one bit — in a sealed token, in a human id or a
scope wherever they occur (table and index), in the 100-byte SQLite header, or anywhere
— and opens the copy as ``haasd run`` would (:meth:`Store.open`, then every grant
loaded). Used by tests/test_store_flips.py (a short run) and bench/store_flips.py.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from factories import make_grant

from haasd.crypto import Key, Sealer
from haasd.errors import StoreError
from haasd.grants import Grant
from haasd.store import Store

HUMANS: Final = ("usr_ada", "usr_bob", "usr_cyd", "usr_dee")
SCOPES: Final = ("status:read", "tasks:dispatch status:read", "tasks:read", "profile:read")
REGIONS: Final = ("token", "text", "header", "anywhere")
#: what serving depends on: a grant loaded readable must have all of it as stored
SERVED: Final = (
    "access_token", "refresh_token", "scope", "access_expires_at", "refresh_expires_at", "state",
)  # fmt: skip


@dataclass
class Tally:
    """What the trials came to: outcomes by region, and every trial that broke a promise."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    #: what the refusals said (the file's name taken out), and how often
    refusals: Counter[str] = field(default_factory=Counter)

    @property
    def trials(self) -> int:
        return sum(self.outcomes.values())

    def by_outcome(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for (_, outcome), n in self.outcomes.items():
            out[outcome] += n
        return out


async def seed_store(path: Path, key: Key) -> list[Grant]:
    """The pristine store: one grant per human, each with its own scope and tokens."""
    grants = [make_grant(h, scope=tuple(s.split())) for h, s in zip(HUMANS, SCOPES, strict=True)]
    async with await Store.open(path, Sealer(key)) as store:
        await store.put_grants(grants)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
    return grants


def targets(path: Path) -> dict[str, list[tuple[int, int]]]:
    """(offset, length) of each region's spans in the pristine file."""
    data = path.read_bytes()
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        blobs = [b for row in conn.execute("SELECT access_token, refresh_token FROM grants")
                 for b in row]  # fmt: skip
        blobs += [b for (b,) in conn.execute("SELECT value FROM meta WHERE name = 'key_check'")]
    texts = [t.encode() for t in (*HUMANS, *SCOPES)]
    spans = {
        "token": [(data.index(b), len(b)) for b in blobs],
        "text": [(i, len(t)) for t in texts for i in _occurrences(data, t)],
        "header": [(0, 100)],
        "anywhere": [(0, len(data))],
    }
    assert all(spans.values()), "every region is somewhere in the file"
    return spans


def _occurrences(data: bytes, text: bytes) -> list[int]:
    found, at = [], data.find(text)
    while at >= 0:
        found.append(at)
        at = data.find(text, at + 1)
    return found


def flip(pristine: bytes, spans: Sequence[tuple[int, int]], rng: random.Random) -> bytes:
    start, length = rng.choice(spans)
    offset = start + rng.randrange(length)
    flipped = bytearray(pristine)
    flipped[offset] ^= 1 << rng.randrange(8)
    return bytes(flipped)


async def trial(
    path: Path, sealer: Sealer, originals: dict[str, Grant], refusals: Counter[str]
) -> tuple[str, str | None]:
    """Open a flipped copy as haasd would: (outcome, a broken promise or None)."""
    try:
        store = await Store.open(path, sealer)
    except StoreError as exc:
        return _refused(path, exc, refusals)
    except Exception as exc:  # noqa: BLE001 - the very thing this campaign looks for
        return "traceback", f"open raised {type(exc).__name__}: {exc}"
    try:
        grants = await store.list_grants(warn=False)
        quarantined = store.unreadable
    except StoreError as exc:
        return _refused(path, exc, refusals)
    except Exception as exc:  # noqa: BLE001
        return "traceback", f"load raised {type(exc).__name__}: {exc}"
    finally:
        await store.close()
    for grant in grants:
        if grant.human_id in quarantined:
            if grant.access_token.reveal() or grant.refresh_token.reveal():
                return "quarantined", f"quarantined {grant.human_id} carries tokens"
            continue
        original = originals.get(grant.human_id)
        if original is None:
            return "wrong", f"a readable grant of an unknown human {grant.human_id!r}"
        changed = [n for n in SERVED if getattr(grant, n) != getattr(original, n)]
        if changed:
            return "wrong", f"{grant.human_id} readable with other {', '.join(changed)}"
    return ("quarantined" if quarantined else "intact"), None


def _refused(path: Path, exc: StoreError, refusals: Counter[str]) -> tuple[str, str | None]:
    said = str(exc)
    refusals[said.replace(str(path), "FILE")[:90]] += 1
    return "refused", None if str(path) in said else f"the refusal names no file: {said}"


async def campaign(directory: Path, flips: int, seed: int) -> Tally:
    """``flips`` trials, reproducible by ``seed``; the pristine store is built in
    ``directory``, each trial's copy beside it."""
    rng = random.Random(seed)
    key = Key.generate()
    sealer = Sealer(key)
    pristine_path = directory / "pristine.db"
    originals = {g.human_id: g for g in await seed_store(pristine_path, key)}
    pristine = pristine_path.read_bytes()
    spans = targets(pristine_path)
    tally = Tally()
    copy = directory / "trial.db"
    for n in range(flips):
        region = REGIONS[n % len(REGIONS)]
        for leftover in directory.glob("trial.db*"):
            leftover.unlink()
        copy.write_bytes(flip(pristine, spans[region], rng))
        outcome, broken = await trial(copy, sealer, originals, tally.refusals)
        tally.outcomes[(region, outcome)] += 1
        if broken is not None:
            tally.failures.append(f"trial {n} ({region}): {broken}")
    shutil.rmtree(directory / "unused", ignore_errors=True)
    return tally
