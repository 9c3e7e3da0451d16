"""The crash campaign on one SQLite store: a real ``haasd run`` process, the simulator with
rotation and reuse detection, and SIGKILLs at seeded random moments and injected points.

Tokens live ``lifetime`` seconds of real time (refreshed at half of it), so every grant is
refreshed every few seconds. Each cycle starts haasd (tests/crash_launch.py forks it,
set to die at the chosen point), waits until it serves, checks it (below), *arms* the
point and waits for the kill, while asking for random humans' tokens and checking each
one at the simulator. Points (:data:`WEIGHTS`):

- ``random``: the driver's SIGKILL after a random wait;
- ``before_send``, ``after_send``, ``after_answer`` of a refresh's request, and
  ``mid_commit`` (a timer inside the write of the rotated tokens or of the intent);
- ``consent_*``: the same three around a consent's code exchange (the driver runs the
  consent: ``POST /v1/consents``, the human approves, ``POST /v1/consents/callback``);
- ``rekey`` and ``restore``: haasd is killed, then the command is run and killed at one
  of its steps (tests/crash_maintenance.py checks what it left).

After each kill the store's files, copied as the crash left them, must pass
``PRAGMA integrity_check``; haasd's own start checks its key, ``quick_check`` and schema.
After each start every grant the simulator still holds alive must be served, with a
token the simulator takes; a grant haasd refuses (409) must be dead at the simulator and
reported as lost to an interrupted rotation — then the driver consents the human again
and goes on. :class:`~crash_result.Result` judges the records.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import httpx
from crash_maintenance import Maintenance
from crash_procs import (
    Daemon,
    Zygote,
    daemon_config,
    integrity,
    intent_open,
    snapshot,
    until_ended,
)
from crash_result import Kill, Lost, Result, Served
from harness import CLIENT_ID, CLIENT_SECRET

from haasd.clock import SystemClock
from haasd.crypto import Key, Sealer
from haasd.grants import Policy, new_grant
from haasd.simulator import Simulator
from haasd.store import Store
from haasd.tokens import parse_token_response

RPM = 60_000
SERVE_MARGIN = Policy().serve_margin
INTERRUPTED = "rotation was interrupted"
#: how often each point is chosen
WEIGHTS = {
    "random": 4, "before_send": 2, "after_send": 2, "after_answer": 2, "mid_commit": 3,
    "consent_before_send": 1, "consent_after_send": 1, "consent_after_answer": 1,
    "rekey": 1, "restore": 1,
}  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """What one campaign does; a seed repeats the choices (not the OS's timing)."""

    seed: int
    grace: float
    kills: int
    humans: int = 10
    lifetime: int = 6
    fraction: float = 0.5
    latency: float = 0.05
    random_wait: tuple[float, float] = (0.0, 1.0)
    #: how long an armed point may take to be reached before the driver kills instead
    point_timeout: float = 8.0


def kill_spec(point: str, rng: random.Random) -> dict[str, object] | None:
    """What the child patches to die at ``point`` (None: the driver kills it)."""
    if point in ("before_send", "after_send", "after_answer"):
        return {"kind": "request", "grant_type": "refresh_token", "when": point,
                "n": rng.randint(1, 3)}  # fmt: skip
    if point.startswith("consent_"):
        when = point.removeprefix("consent_")
        return {"kind": "request", "grant_type": "authorization_code", "when": when, "n": 1}
    if point == "mid_commit":
        method = "finish_refresh" if rng.random() < 0.8 else "begin_refresh"
        return {"kind": "commit", "method": method, "n": rng.randint(1, 3),
                "delay": rng.uniform(0.0, 0.004)}  # fmt: skip
    return None


class Campaign:
    def __init__(self, plan: Plan, base: Path) -> None:
        self.plan = plan
        self.base = base
        self.rng = random.Random(plan.seed)
        self.asking_rng = random.Random(plan.seed + 1)  # timing-dependent, kept apart
        self.humans = [f"usr_k{n}" for n in range(plan.humans)]
        self.sim = Simulator(
            SystemClock(), client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
            rotate_refresh_tokens=True, reuse_detection=True, reuse_grace=plan.grace,
            expires_in=plan.lifetime, requests_per_minute=RPM, grace_replays=None,
        )  # fmt: skip
        self.kills: list[Kill] = []
        self.lost: list[Lost] = []
        self.served = Served()
        self.found: list[str] = []
        self.consents: Counter[str] = Counter()
        self.unfinished: list[tuple[str, str]] = []  # (human, callback URL) cut by a kill
        self.last_token: dict[str, str] = {}
        self._asking = False
        self._consented = 0

    async def run(self) -> Result:
        started = time.monotonic()
        async with self.sim.running(), Zygote(self.base / "zygote.log") as zygote:
            config = daemon_config(
                self.base / "d", self.sim.token_url, rpm=RPM, fraction=self.plan.fraction
            )
            await self._seed(config.parent)
            self.sim.latency(self.plan.latency)
            self.daemon = Daemon(zygote, config)
            self.maintenance = Maintenance(zygote, config, self.base, self.rng, self.found)
            try:
                first = list(WEIGHTS)  # every point once, in a seeded order; then by weight
                self.rng.shuffle(first)
                while len(self.kills) < self.plan.kills:
                    weighted = self.rng.choices(*zip(*WEIGHTS.items(), strict=True))[0]
                    await self._cycle(first.pop() if first else weighted)
                    if len(self.kills) % 50 < 2:
                        print(f"  {len(self.kills)}/{self.plan.kills} kills,"
                              f" {self._progress()}", flush=True)  # fmt: skip
                await self._final()
            finally:
                with anyio.CancelScope(shield=True):
                    if self.daemon.pid is not None:
                        await self.daemon.kill()
        return Result(
            self.plan.seed, self.plan.grace, self.plan.latency, self.kills,
            list(self.sim.stats.spent_presented), self.lost, self.served,
            sum(self.sim.stats.refreshes.values()), self.found, self.consents,
            self.sim.stats.code_replays, self.maintenance.rekeyed, time.monotonic() - started,
        )  # fmt: skip

    def _progress(self) -> str:
        stats = self.sim.stats
        return (f"{sum(stats.refreshes.values())} refreshes, {stats.grace_replays} grace"
                f" replays, {stats.reuse_events} reuse events, {len(self.lost)} lost")  # fmt: skip

    async def _seed(self, directory: Path) -> None:
        """Each human consents at the simulator; the grants go in as ``haasd import`` would."""
        key = Key.from_text((directory / "store.key").read_text())
        async with await Store.open(directory / "haasd.db", Sealer(key)) as store:
            grants = []
            for human_id in self.humans:
                answer = parse_token_response(await self.sim.consent(human_id))
                now = self.sim.clock.time()
                grants.append(new_grant(answer, "test", now, Policy(), random.Random(1)))
            await store.put_grants(grants)

    # -- one cycle ------------------------------------------------------------------------

    async def _cycle(self, point: str) -> None:
        daemon = self.daemon
        await daemon.start(kill_spec(point, self.rng))
        await daemon.until_serving()
        await self._check()
        if point in ("rekey", "restore"):
            if point == "restore":
                await self.maintenance.backup()
            kill = await self._kill_after(self.rng.uniform(*self.plan.random_wait), point)
            self.kills.append(kill)
            self._check_files()
            self.kills.extend(await self.maintenance.run(point))
            return
        daemon.arm()
        self._asking = True
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._ask_tokens)
            if point.startswith("consent_"):
                tg.start_soon(self._consent, self._new_or_known(), True)
            if point == "random":
                kill = await self._kill_after(self.rng.uniform(*self.plan.random_wait), point)
            else:
                kill = await self._until_point(point)
            self._asking = False
        copy = self._check_files()
        if kill.detail.startswith("mid_commit "):
            kill = replace(kill, detail=await self._commit_outcome(kill.detail, copy))
        self.kills.append(kill)

    async def _commit_outcome(self, detail: str, copy: Path) -> str:
        """Whether the write the kill struck had committed ("mid_commit METHOD HUMAN")."""
        _, method, human_id = detail.split()
        intent = await intent_open(copy, self.maintenance.key, human_id)
        committed = intent if method == "begin_refresh" else not intent
        return f"{method} {'committed' if committed else 'not committed'}"

    async def _kill_after(self, wait: float, point: str) -> Kill:
        await anyio.sleep(wait)
        at = time.time()
        self._ended(await self.daemon.kill())
        return Kill("random", at, True, "" if point == "random" else f"before {point}")

    async def _until_point(self, point: str) -> Kill:
        daemon = self.daemon
        assert daemon.pid is not None
        if not await until_ended(daemon.pid, self.plan.point_timeout):
            at = time.time()
            self._ended(await daemon.kill())
            return Kill(point, at, False, "not reached: killed by the driver")
        self._ended(await daemon.ended())
        mark = daemon.marked()
        if mark is None:
            self.found.append(f"haasd ended by itself, not at {point}:\n{daemon.tail()}")
            return Kill(point, time.time(), False, "ended by itself")
        return Kill(point, float(mark["at"]), True, str(mark["point"]))

    def _ended(self, code: int) -> None:
        if code != -9:
            self.found.append(f"haasd exited {code} instead of dying by SIGKILL")

    def _check_files(self) -> Path:
        """The store's files, as the kill left them, pass SQLite's integrity check; the
        copy checked."""
        copy = snapshot(self.daemon.store, self.base / "crashed")
        problems = integrity(copy)
        if problems:
            self.found.append(f"integrity check after a kill: {problems[:5]}")
        return copy

    # -- checks ---------------------------------------------------------------------------

    async def _check(self) -> None:
        """Every grant alive at the simulator is served; every one refused is dead there
        and reported as lost to an interrupted rotation (then consented again)."""
        for human_id, callback in self.unfinished:
            await self._callback_again(human_id, callback)
        self.unfinished.clear()
        for human_id in list(self.humans):
            await self._check_human(human_id)

    async def _check_human(self, human_id: str) -> None:
        for _ in range(8):
            try:
                reply = await self.daemon.request(
                    "GET", f"/v1/tokens/{human_id}?wait=10", limit=20.0
                )
            except (httpx.HTTPError, OSError) as exc:
                self.found.append(f"asking for {human_id}'s token after a start: {exc!r}")
                return
            if reply.status_code == 200:
                self._judge(human_id, reply.json()["access_token"], time.time())
                return
            if reply.status_code == 409:
                await self._refused(human_id)
                continue
            await anyio.sleep(0.3)
        self.found.append(f"{human_id}: no token served after a start ({reply.status_code})")

    async def _refused(self, human_id: str) -> None:
        """haasd refuses the grant: it must be dead at the server, and said so."""
        if self._alive(human_id):
            self.found.append(f"{human_id}: refused (409) while alive at the server")
        status = (await self.daemon.request("GET", f"/v1/humans/{human_id}")).json()
        error = status.get("last_error")
        logged = any(
            human_id in line and INTERRUPTED in line and "grant refused by the server" in line
            for line in self.daemon.log.read_text(errors="replace").splitlines()
        )
        reported = status["state"] == "needs_reconsent" and INTERRUPTED in (error or "")
        self.lost.append(Lost(human_id, time.time(), reported and logged, error))
        await self._consent(human_id, False)

    def _alive(self, human_id: str) -> bool:
        """Is the grant haasd last served a token of alive at the simulator? (A consent
        cut off after its code was exchanged leaves the human a second grant there, one
        haasd never had.)"""
        token = self.last_token.get(human_id)
        if token is None:
            return self.sim.has_active_grant(human_id)
        record = self.sim._authority._access_tokens[token]  # noqa: SLF001 - the test's own server
        family = record.family
        return not family.revoked and self.sim.clock.time() < family.expires_at

    def _judge(self, human_id: str, token: str, asked: float) -> None:
        self.last_token[human_id] = token
        if self.sim.validate_access_token(token) == human_id:
            self.served.ok += 1
            return
        ends = self.sim.access_token_expires_at(token)
        if ends is not None and ends >= asked + SERVE_MARGIN:
            self.served.late += 1
        else:
            self.served.dead.append((human_id, time.time()))

    async def _ask_tokens(self) -> None:
        while self._asking:
            human_id = self.asking_rng.choice(self.humans)
            asked = time.time()
            try:
                reply = await self.daemon.request("GET", f"/v1/tokens/{human_id}", limit=3.0)
            except (httpx.HTTPError, OSError):
                await anyio.sleep(0.05)
                continue
            if reply.status_code == 200:
                self._judge(human_id, reply.json()["access_token"], asked)
            await anyio.sleep(0.02)

    # -- consents -------------------------------------------------------------------------

    def _new_or_known(self) -> str:
        if self.rng.random() < 0.5:
            self._consented += 1
            return f"usr_c{self._consented}"
        return self.rng.choice(self.humans)

    async def _consent(self, human_id: str, killed: bool) -> None:
        """Consent ``human_id`` through haasd; ``killed``: haasd dies in the callback."""
        daemon = self.daemon
        reply = await daemon.request("POST", "/v1/consents", json={"human_id": human_id})
        assert reply.status_code == 201, reply.text
        location = await self.sim.visit(reply.json()["authorization_url"])
        assert location is not None
        body = {"callback_url": location}
        try:
            reply = await daemon.request("POST", "/v1/consents/callback", json=body, limit=20)
        except (httpx.HTTPError, OSError):
            if not killed:
                raise
            self.unfinished.append((human_id, location))
            return
        if reply.status_code == 201:
            if human_id not in self.humans:
                self.humans.append(human_id)
        elif not killed:
            self.found.append(f"{human_id}: consent refused: {reply.status_code} {reply.text}")

    async def _callback_again(self, human_id: str, callback: str) -> None:
        """The callback a kill cut off, sent again (as an app would): a new consent if the
        first cannot be finished."""
        body = {"callback_url": callback}
        reply = await self.daemon.request("POST", "/v1/consents/callback", json=body, limit=20)
        self.consents[str(reply.status_code)] += 1
        if reply.status_code == 201:
            if human_id not in self.humans:
                self.humans.append(human_id)
        elif human_id not in self.humans:
            await self._consent(human_id, False)

    async def _final(self) -> None:
        """haasd once more, unarmed: every grant served; then stopped cleanly."""
        await self.daemon.start()
        await self.daemon.until_serving()
        await self._check()
        assert self.daemon.pid is not None
        os.kill(self.daemon.pid, signal.SIGTERM)
        code = await self.daemon.ended()
        if code != 0:
            self.found.append(f"haasd exited {code} on SIGTERM:\n{self.daemon.tail()}")
