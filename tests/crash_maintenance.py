"""The crash campaign's ``haasd rekey`` and ``haasd restore``, killed at one of their steps
(or after a random time), and what they must leave: a store that exactly one key opens —
the old one before the rename onto the store, the new one after — holding every grant
as before, readable, and sound (no half state).

haasd itself was killed just before (a crash, then the operator's command): its ``-wal``
is still beside the store.
"""

from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from pathlib import Path

from crash_procs import Row, Zygote, integrity, new_key, rows_of, run_command, snapshot, use_key
from crash_result import Kill

from haasd.crypto import Key
from haasd.errors import WrongKeyError

#: (function, before/after) of ``haasd rekey``; then the key expected to open the store
REKEY_STEPS = (
    ("haasd.storefiles:copy_live", "before", "old"),
    ("haasd.storefiles:copy_live", "after", "old"),
    ("haasd.maintenance:_reseal_table", "after", "old"),
    ("haasd.maintenance:verify_file", "after", "old"),
    ("haasd.storefiles:install", "before", "old"),
    ("os:replace", "before", "old"),
    ("os:replace", "after", "new"),
    ("haasd.storefiles:install", "after", "new"),
)
#: the same of ``haasd restore``: "old" is the store as haasd's kill left it, "new" the backup
RESTORE_STEPS = (
    ("haasd.storefiles:copy_file", "before", "old"),
    ("haasd.storefiles:copy_file", "after", "old"),
    ("haasd.maintenance:verify_file", "before", "old"),
    ("haasd.maintenance:verify_file", "after", "old"),
    ("haasd.storefiles:install", "before", "old"),
    ("os:replace", "before", "old"),
    ("os:replace", "after", "new"),
    ("haasd.storefiles:install", "after", "new"),
)
#: a killed command's random time, when no step is chosen (its work takes ~0.1 s)
TIMER = (0.0, 0.3)


class Maintenance:
    def __init__(
        self, zygote: Zygote, config: Path, base: Path, rng: random.Random, found: list[str]
    ) -> None:
        self.zygote = zygote
        self.config = config
        self.store = config.parent / "haasd.db"
        self.base = base
        self.rng = rng
        self.found = found
        self.key = Key.from_text((config.parent / "store.key").read_text())
        self.rekeyed: Counter[str] = Counter()
        self.done = 0
        self.backup_file = base / "backup0.db"

    async def run(self, command: str) -> list[Kill]:
        """Run ``command`` (haasd stopped), killed; check what it left; the kills."""
        expected = await self._rows(self.key, "before")
        if expected is None:
            self.found.append(f"the store did not open before {command}")
            return []
        if command == "rekey":
            return await self._rekey(expected)
        return await self._restore(expected)

    async def _command(
        self, argv: list[str], step: tuple[str, str] | None
    ) -> tuple[int, float | None]:
        """Run ``haasd ARGV`` set to die at ``step`` (None: after a random time)."""
        kill: dict[str, object] | None = None
        after: float | None = None
        if step is None:
            after = self.rng.uniform(*TIMER)
        else:
            armed = self.base / "armed-cli"
            armed.touch()
            kill = {"kind": "call", "target": step[0], "when": step[1], "n": 1,
                    "armed": str(armed), "mark": str(self.base / "mark-cli")}  # fmt: skip
            if step[0] == "os:replace":
                kill["store"] = str(self.store)
        (self.base / "mark-cli").unlink(missing_ok=True)
        log = self.base / "cli.log"
        code = await run_command(self.zygote, argv, cwd=self.config.parent, log=log,
                                 kill=kill, kill_after=after)  # fmt: skip
        return code, after

    async def _rekey(self, expected: dict[str, Row]) -> list[Kill]:
        self.done += 1
        new_path = self.base / f"new{self.done}.key"
        new = new_key(new_path)
        choice = self.rng.choice([*REKEY_STEPS, None])
        step = None if choice is None else choice[:2]
        argv = ["rekey", "--config", str(self.config), "--new-key", str(new_path)]
        code, _ = await self._command(argv, step)
        opened = {name: await self._rows(key, name) for name, key in (("old", self.key),
                                                                    ("new", new))}  # fmt: skip
        in_force = [name for name, rows in opened.items() if rows is not None]
        want = "new" if code == 0 else (choice[2] if choice is not None else None)
        what = f"rekey killed at {step or 'a random time'} (exit {code})"
        if len(in_force) != 1 or (want is not None and in_force != [want]):
            self.found.append(f"{what}: the store opens with {in_force or 'no key'}")
        else:
            self._compare(what, opened[in_force[0]], expected)
            self.rekeyed[in_force[0]] += 1
            if in_force == ["new"]:
                use_key(self.config, new)
                self.key = new
        return self._kills("rekey", code, step)

    async def backup(self) -> None:
        """A backup of the running haasd's store, to be restored after its kill: older
        than the store by then (haasd goes on refreshing)."""
        self.done += 1
        self.backup_file = self.base / f"backup{self.done}.db"
        argv = ["backup", "--config", str(self.config), str(self.backup_file)]
        code = await run_command(self.zygote, argv, cwd=self.config.parent,
                                 log=self.base / "cli.log")  # fmt: skip
        if code != 0:
            self.found.append(f"haasd backup exited {code}")

    async def _restore(self, expected: dict[str, Row]) -> list[Kill]:
        """Restore the backup, killed; the store must be the crashed one (its -wal
        included) or the backup, nothing between. Then the crashed store is put back, so
        that the campaign goes on from where haasd was killed."""
        backup = self.backup_file
        if not backup.exists():
            return []
        saved = snapshot(self.store, self.base / "saved")
        restored = await self._rows(self.key, "backup", backup)
        if restored is None:
            self.found.append("the backup does not open with the store's key")
            return []
        choice = self.rng.choice([*RESTORE_STEPS, None])
        step = None if choice is None else choice[:2]
        argv = ["restore", "--config", str(self.config), str(backup)]
        code, _ = await self._command(argv, step)
        rows = await self._rows(self.key, "after")
        if code == 0 or (choice is not None and choice[2] == "new"):
            wanted = [restored]
        else:
            wanted = [expected] if choice is not None else [expected, restored]
        what = f"restore killed at {step or 'a random time'} (exit {code})"
        if rows is None:
            self.found.append(f"{what}: the store does not open with its key")
        elif rows not in wanted:
            self._compare(what, rows, wanted[0])
        for suffix in ("", "-wal", "-shm"):
            self.store.with_name(self.store.name + suffix).unlink(missing_ok=True)
            kept = saved.with_name(saved.name + suffix)
            if kept.exists():
                shutil.copy(kept, self.store.with_name(self.store.name + suffix))
        backup.unlink()
        return self._kills("restore", code, step)

    def _kills(self, command: str, code: int, step: tuple[str, str] | None) -> list[Kill]:
        mark = self.base / "mark-cli"
        if code != -9:
            return []  # it finished before the random time: no kill
        at = mark.stat().st_mtime if mark.exists() else time.time()
        detail = f"{step[0]} ({step[1]})" if step is not None else "timer"
        return [Kill(command, at, mark.exists() or step is None, detail)]

    def _compare(self, what: str, rows: dict[str, Row] | None, expected: dict[str, Row]) -> None:
        if rows != expected:
            missing = sorted(set(expected) - set(rows or {}))
            changed = sorted(h for h in expected if rows and h in rows and rows[h] != expected[h])
            self.found.append(f"{what}: half state: missing {missing}, changed {changed}")

    async def _rows(self, key: Key, name: str, path: Path | None = None) -> dict[str, Row] | None:
        """The grants of (a copy of) the store (or ``path``) with ``key``; None if it is
        not the key. Rows that do not open, or an integrity problem, are problems."""
        copy = snapshot(path or self.store, self.base / f"check-{name}")
        problems = integrity(copy)
        if problems:
            self.found.append(f"integrity check ({name}): {problems[:5]}")
        try:
            rows, unreadable = await rows_of(copy, key)
        except WrongKeyError:
            return None
        if unreadable:
            self.found.append(f"rows that do not open with the key ({name}): {sorted(unreadable)}")
        return rows
