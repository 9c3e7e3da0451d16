"""``haasd demo``: the whole life of consents in a minute, with simulated humans.

No setup and no network: the simulated HaaS authorization server and the real daemon
run in this process on a compressed clock (by default one simulated hour per 10 s), with
a temporary store, a fresh key and a real Unix socket. Simulated humans are onboarded
through the real consent flow — one approves, one denies, one never answers — and a
small app fetches their tokens over the socket while the live view shows what happens:
refreshes, a 429 honoured, a flaky moment survived, a re-consent flag, a refresh-token
limit reached and a re-consent. Then it stops, cleans up and sums up.

So that the 30-day cliff fits in a minute, the demo's refresh tokens live 4 simulated
hours (warning 1 hour before); everything else is as in production.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final, TextIO

import anyio
import anyio.lowlevel
import httpx

from haasd.app import Daemon, run
from haasd.clock import ScaledClock
from haasd.config import load_config
from haasd.crypto import Key
from haasd.errors import ConsentDeniedError
from haasd.events import Event
from haasd.logs import configure_logging
from haasd.simulator import Simulator

__all__ = ["DemoSummary", "main_demo", "run_demo"]

HOUR: Final = 3600.0
RT_LIFETIME: Final = 4 * HOUR
RT_WARNING: Final = 1 * HOUR
CLIENT_ID: Final = "demo_app"
CLIENT_SECRET: Final = "demo-client-secret"  # noqa: S105 - the simulator's, test mode only
REDIRECT_URI: Final = "http://127.0.0.1:8765/callback"
#: who is onboarded, and what each does with the consent page
HUMANS: Final = (
    ("usr_maria_42", "approve"),
    ("usr_dave_7", "approve"),
    ("usr_bob_3", "deny"),
    ("usr_carol_9", "ignore"),
)
#: the human the app re-consents when flagged; the other approver is left to lapse
RECONSENTS: Final = "usr_maria_42"


@dataclass
class DemoSummary:
    tokens_served: int = 0
    refreshes: int = 0
    failures_survived: int = 0
    least_ttl: float | None = None
    refused_409: int = 0

    def lines(self) -> list[str]:
        least = "-" if self.least_ttl is None else f"{self.least_ttl / 60:.0f} simulated minutes"
        return [
            f"tokens served to the app    {self.tokens_served}",
            f"refreshes                   {self.refreshes}",
            f"HaaS failures survived      {self.failures_survived} (429s and 5xx answers)",
            f"least time-to-expiry served {least}",
            f"refused after the limit     {self.refused_409} (409 needs_reconsent)",
        ]


class _View:
    """The live view: one line per thing that happens, stamped with simulated time."""

    def __init__(self, out: TextIO, clock: ScaledClock) -> None:
        self._out = out
        self._clock = clock
        self._start = clock.time()
        color = out.isatty() and os.environ.get("NO_COLOR") is None
        self._dim = "\033[2m" if color else ""
        self._bold = "\033[1m" if color else ""
        self._reset = "\033[0m" if color else ""

    def say(self, what: str, *, strong: bool = False) -> None:
        elapsed = max(0.0, self._clock.time() - self._start)
        stamp = f"{int(elapsed // 3600):02d}:{int(elapsed % 3600 // 60):02d}"
        style = self._bold if strong else ""
        print(f"{self._dim}[+{stamp}]{self._reset} {style}{what}{self._reset}", file=self._out)
        self._out.flush()

    def event(self, event: Event) -> None:
        who = event.human_id or ""
        d = event.details
        match event.type:
            case "token.refreshed":
                self.say(f"refreshed   {who}: new access token, rotated refresh token")
            case "refresh.failed":
                reason = str(d.get("reason", ""))[:70]
                self.say(f"retrying    {who}: {reason} (attempt {d.get('failures')})")
            case "grant.reconsent_due":
                self.say(
                    f"FLAGGED     {who}: refresh token ends within the hour: ask to re-consent",
                    strong=True,
                )
            case "grant.needs_reconsent":
                self.say(f"LIMIT       {who}: {d.get('reason')}", strong=True)
            case "consent.started":
                self.say(f"consent     {who or 'a human'}: authorization URL sent")
            case "consent.granted":
                self.say(f"CONSENTED   {who}: scope {d.get('scope', '')}", strong=True)
            case "consent.denied":
                self.say(f"DENIED      {who or 'a human'} said no (access_denied)", strong=True)
            case "consent.abandoned":
                self.say("ABANDONED   a human closed the tab and never came back", strong=True)
            case "lost":
                self.say(f"(the view fell behind: {d.get('count')} events not shown)")


async def _consent(daemon: Daemon, sim: Simulator, view: _View, human_id: str) -> None:
    pending = await daemon.consent.start(human_id=human_id)
    location = await sim.visit(pending.authorization_url)
    if location is None:
        view.say(f"waiting     {human_id} opened the page ... and closed the tab")
        return
    try:
        result = await daemon.consent.finish_url(location)
    except ConsentDeniedError:
        return
    if result.replaced:
        view.say(f"RE-CONSENT  {result.human_id}: limit restarts from now", strong=True)


async def _app(daemon: Daemon, view: _View, summary: DemoSummary, every: float) -> None:
    """The demo app: fetches each human's token over the real socket, as an app would."""
    transport = httpx.AsyncHTTPTransport(uds=str(daemon.socket_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://haasd") as client:
        refused: set[str] = set()
        while True:
            for human_id, decision in HUMANS:
                if decision != "approve" or human_id in refused:
                    continue
                answer = await client.get(f"/v1/tokens/{human_id}", params={"min_ttl": 60})
                if answer.status_code == 200:
                    summary.tokens_served += 1
                    ttl = float(answer.json()["expires_in"])
                    summary.least_ttl = (
                        ttl if summary.least_ttl is None else min(summary.least_ttl, ttl)
                    )
                elif answer.status_code == 409:
                    summary.refused_409 += 1
                    refused.add(human_id)
                    view.say(
                        f"app         {human_id}: 409 needs_reconsent: the token has ended",
                        strong=True,
                    )
            await daemon.clock.sleep(every)


async def _script(daemon: Daemon, sim: Simulator, view: _View) -> None:
    """The incidents, at simulated times."""
    clock = daemon.clock

    async def at(hours: float, action: Callable[[], Awaitable[None] | None]) -> None:
        await clock.sleep_until(hours * HOUR)
        result = action()
        if result is not None:
            await result

    def rate_limit() -> None:
        view.say(
            "incident    HaaS will answer the next refresh with 429, Retry-After 300 s", strong=True
        )
        sim.fail_next(1, status=429, headers={"Retry-After": "300"})

    def flaky_on() -> None:
        view.say("incident    HaaS turns flaky: half the requests fail with 5xx", strong=True)
        sim.flaky(0.5, seed=3)

    def flaky_off() -> None:
        view.say("incident    HaaS is healthy again")
        sim.flaky(0.0)

    await at(0.8, rate_limit)
    await at(1.6, flaky_on)
    await at(2.4, flaky_off)


async def _watch(daemon: Daemon, sim: Simulator, view: _View, tg: anyio.abc.TaskGroup) -> None:
    with daemon.events.subscribe(maxsize=1000) as feed:
        async for event in feed:
            view.event(event)
            if event.type == "refresh.failed" and "rate_limit" in str(event.details.get("reason")):
                view.say("honoured    no request to HaaS until the Retry-After window ends")
            if event.type == "grant.reconsent_due" and event.human_id == RECONSENTS:
                tg.start_soon(_consent, daemon, sim, view, RECONSENTS)


def _simulator(clock: ScaledClock) -> Simulator:
    """The simulated HaaS on the free plan, with the demo's humans."""
    sim = Simulator(
        clock,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uris=[REDIRECT_URI],
        plan="free",
        refresh_token_lifetime=RT_LIFETIME,
        rotate_refresh_tokens=True,
        reuse_grace=60.0,
    )
    for human_id, decision in HUMANS:
        sim.add_human(human_id, decision)  # type: ignore[arg-type]
    return sim


def _environment(sim: Simulator, directory: Path) -> dict[str, str]:
    """The daemon's configuration, as ``HAASD_*`` variables: the simulator, a fresh key,
    the store and socket in ``directory``, the demo's short lifetimes."""
    return {
        "HAASD_HAAS_ENVIRONMENT": "test",
        "HAASD_HAAS_CLIENT_ID": CLIENT_ID,
        "HAASD_HAAS_CLIENT_SECRET": CLIENT_SECRET,
        "HAASD_HAAS_AUTHORIZE_URL": sim.authorize_url,
        "HAASD_HAAS_TOKEN_URL": sim.token_url,
        "HAASD_HAAS_REDIRECT_URI": REDIRECT_URI,
        "HAASD_HAAS_PLAN": "free",
        "HAASD_STORE_PATH": str(directory / "haasd.db"),
        "HAASD_STORE_KEY": Key.generate().to_text(),
        "HAASD_SOCKET_PATH": str(directory / "haasd.sock"),
        "HAASD_REFRESH_REFRESH_TOKEN_LIFETIME": str(int(RT_LIFETIME)),
        "HAASD_REFRESH_RECONSENT_WARNING": str(int(RT_WARNING)),
        "HAASD_CONSENT_PENDING_TTL": "30m",
        "HAASD_LOG_LEVEL": "error",
    }


async def run_demo(*, speed: float, duration: float, out: TextIO) -> DemoSummary:
    configure_logging("error", "console")  # the live view speaks; the log only if it must
    clock = ScaledClock(speed)
    view = _View(out, clock)
    summary = DemoSummary()
    sim = _simulator(clock)
    with tempfile.TemporaryDirectory(prefix="haasd-demo-") as tmp:
        directory = Path(tmp)
        async with sim.running():
            env = _environment(sim, directory)
            config = load_config(None, env)
            view.say(
                f"haasd demo: {speed * 10 / 60:g} simulated minutes per 10 s of yours; the "
                "simulated HaaS on loopback, the daemon on a Unix socket, a fresh encrypted store",
                strong=True,
            )
            view.say("(refresh tokens live 4 simulated hours here, 30 days in production)")
            async with anyio.create_task_group() as tg:
                daemon: Daemon = await tg.start(
                    partial(
                        run, config, clock=clock, environ=env | {"NOTIFY_SOCKET": ""}, signals=False
                    )
                )
                tg.start_soon(_watch, daemon, sim, view, tg)
                await anyio.lowlevel.checkpoint()
                for human_id, _ in HUMANS:
                    await _consent(daemon, sim, view, human_id)
                tg.start_soon(_app, daemon, view, summary, 300.0)
                tg.start_soon(_script, daemon, sim, view)
                await anyio.sleep(duration)
                stats = daemon.refresher.stats
                summary.refreshes = stats.refreshes["ok"]
                summary.failures_survived = sum(
                    n for status, n in sim.stats.statuses.items() if status >= 500 or status == 429
                )
                tg.cancel_scope.cancel()
    view.say("demo over: daemon stopped, temporary store and socket removed", strong=True)
    return summary


def main_demo(speed: float, duration: float) -> int:
    from haasd.app import run_unwrapped

    result: list[DemoSummary] = []

    async def go() -> None:
        result.append(await run_demo(speed=speed, duration=duration, out=sys.stdout))

    try:
        run_unwrapped(go)
    except KeyboardInterrupt:
        print("\ninterrupted: daemon stopped, temporary store removed")
        return 130
    print()
    for line in result[0].lines():
        print(f"  {line}")
    return 0
