"""The composition root: config → store → auth client → refresher → socket server.

The one place that builds everything and runs it in one task group. The socket serves
as soon as the store is open, while the grants load: a token whose stored row has the
time asked for is served from that row, everything else waits for the start
(:mod:`haasd.server.starting`). Readiness is explicit: ``READY=1`` (systemd) and
:func:`run`'s ``task_status`` fire only once every grant is loaded too. Signals: SIGTERM/SIGINT
stop cleanly (the server stops accepting and lets answers in flight finish, a refresh in
flight writes its answer — that step is shielded — then the store closes); SIGHUP
reloads access rules, log level and refresh policy, keeping the old configuration if the
new one is invalid.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from haasd.authclient import AuthClient
from haasd.clock import Activity, Clock, ManualClock, SystemClock
from haasd.config import Config, access_override_note, load_config
from haasd.consent import ConsentFlow
from haasd.coordination import Coordination
from haasd.errors import ConfigError, HaasdError
from haasd.events import EventBus
from haasd.grantstore import GrantStore
from haasd.logs import configure_logging
from haasd.metrics import EngineCollector
from haasd.parts import coordination_of, open_store, policy_of
from haasd.ratelimit import RateBudget
from haasd.refresher import Refresher
from haasd.server import TokenServer, open_listener
from haasd.systemd import Notifier, watchdog_interval

__all__ = ["Daemon", "main_run", "run", "run_unwrapped"]

_log = structlog.get_logger("haasd")
#: how often the systemd STATUS= line is refreshed
STATUS_EVERY: Final = 30.0
#: the config keys SIGHUP applies; the rest need a restart
RELOADABLE: Final = ("access", "log", "refresh")


@dataclass
class Daemon:
    """What a running haasd is made of (for the demo, tests and signal handlers)."""

    config: Config
    clock: Clock
    store: GrantStore
    auth: AuthClient
    budget: RateBudget
    events: EventBus
    refresher: Refresher
    consent: ConsentFlow
    server: TokenServer
    socket_path: Path
    #: every grant loaded, every part running, READY=1 sent
    ready: bool = False

    def status_line(self) -> str:
        """systemd's STATUS=: the grants, health, and the schedule's next deadline (read
        from the schedule, not by scanning 100,000 grants every 30 s)."""
        count, deadline = self.refresher.summary()
        line = f"{count} grants, {self.refresher.health().status}"
        if deadline is not None:
            line += f"; next deadline in {max(0, int(deadline - self.clock.time()))}s"
        return line

    def reload(self, path: Path | None, environ: Mapping[str, str] | None = None) -> bool:
        """Apply a new config's access rules, log settings and refresh policy."""
        try:
            new = load_config(path, environ)
        except ConfigError as exc:
            _log.error("reload refused: the new configuration is invalid", error=str(exc))
            return False
        restart = [
            name
            for name in ("haas", "store", "socket", "cluster")
            if getattr(new, name) != getattr(self.config, name)
        ]
        configure_logging(new.log.level, new.log.format)
        self.server.update_rules(new.access)
        self.refresher.policy = policy_of(new)
        self.config = new
        _log.info("configuration reloaded", applied=list(RELOADABLE), need_restart=restart)
        note = access_override_note(new)
        if note is not None:
            _log.warning(note)
        return True


async def run(
    config: Config,
    *,
    config_path: Path | None = None,
    clock: Clock | None = None,
    environ: Mapping[str, str] | None = None,
    signals: bool = True,
    task_status: TaskStatus[Daemon] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run haasd until cancelled or signalled; ``task_status`` gets the :class:`Daemon`."""
    env = os.environ if environ is None else environ
    if note := access_override_note(config):
        _log.warning(note)  # HAASD_ACCESS replaced the file's rules: never silently
    clock = clock or SystemClock()
    notifier = Notifier(env)
    client_secret = config.haas.client_secret.load()
    activity = Activity()
    if isinstance(clock, ManualClock):  # a simulation: time waits while haasd's I/O is out
        clock.add_settle_hook(activity.wait_idle)
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(
            open_store(config, retry_for=config.store.connect_timeout)
        )
        coordination = coordination_of(config, store)
        budget = RateBudget(config.haas.requests_per_minute, clock, shared=coordination.rate)
        auth = AuthClient.from_config(config.haas, client_secret, budget, activity=activity)
        stack.push_async_callback(auth.aclose)
        events, refresher, consent, server = _parts(
            config, store, auth, budget, clock, activity, coordination
        )
        daemon = Daemon(
            config, clock, store, auth, budget, events, refresher, consent, server,
            config.socket.path,
        )  # fmt: skip
        async with anyio.create_task_group() as tg:
            if signals:  # before the socket: a SIGTERM once it is there must stop cleanly
                await tg.start(_signal_loop, tg, daemon, notifier, config_path, environ)
            await tg.start(coordination.run)  # in a cluster: listening before loading
            listener = await open_listener(config.socket, environ=env)
            stack.push_async_callback(listener.aclose)
            # serving while the grants load: tokens from their rows (haasd.server.starting)
            await tg.start(server.serve, listener)
            await tg.start(refresher.run)
            await tg.start(consent.run)
            server.started()
            _ready(tg, daemon, notifier, env)
            tg.start_soon(refresher.open_sealed)  # after READY: serving comes first
            task_status.started(daemon)
    _log.info("haasd stopped")


def _parts(
    config: Config,
    store: GrantStore,
    auth: AuthClient,
    budget: RateBudget,
    clock: Clock,
    activity: Activity,
    coordination: Coordination,
) -> tuple[EventBus, Refresher, ConsentFlow, TokenServer]:
    """The event bus, the refresh engine, the consent flow and the token server, over one
    store and one auth client."""
    events = EventBus()
    refresher = Refresher(
        store=store,
        auth=auth,
        clock=clock,
        policy=policy_of(config),
        events=events,
        budget=budget,
        rng=random.SystemRandom(),
        activity=activity,
        coordination=coordination,
    )
    consent = ConsentFlow(
        store,
        auth,
        refresher,
        clock,
        events,
        config.haas,
        pending_ttl=config.consent.pending_ttl,
        max_pending=config.consent.max_pending,
        activity=activity,
    )
    server = TokenServer(
        refresher,
        config.access,
        collectors=[EngineCollector(refresher, budget)],
        consents=consent,
        starting=True,
    )
    return events, refresher, consent, server


def _ready(tg: TaskGroup, daemon: Daemon, notifier: Notifier, env: Mapping[str, str]) -> None:
    """Tell systemd (READY=1) and the log; start the watchdog and status pings."""
    daemon.ready = True
    notifier.ready(daemon.status_line())
    _log.info(
        "haasd ready",
        socket=str(daemon.config.socket.path),
        grants=daemon.refresher.summary()[0],
        environment=daemon.config.haas.environment,
    )
    interval = watchdog_interval(env)
    if interval is not None:
        tg.start_soon(notifier.watchdog, interval)
    if notifier.enabled:
        tg.start_soon(_status_loop, notifier, daemon)


async def _status_loop(notifier: Notifier, daemon: Daemon) -> None:
    while True:
        await anyio.sleep(STATUS_EVERY)
        notifier.status(daemon.status_line())


async def _signal_loop(
    tg: anyio.abc.TaskGroup,
    daemon: Daemon,
    notifier: Notifier,
    config_path: Path | None,
    environ: Mapping[str, str] | None,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as received:
        task_status.started()
        async for signum in received:
            if signum == signal.SIGHUP:
                if not daemon.ready:  # while loading: READY=1 must wait for the load
                    daemon.reload(config_path, environ)
                    continue
                notifier.notify("RELOADING=1")
                daemon.reload(config_path, environ)
                notifier.notify("READY=1", f"STATUS={daemon.status_line()}")
                continue
            _log.info("stopping", signal=signal.Signals(signum).name)
            notifier.stopping()
            tg.cancel_scope.cancel()
            return


def main_run(config_path: Path | None) -> int:
    """``haasd run``: load, configure logging, run in the foreground until signalled."""
    config = load_config(config_path)
    configure_logging(config.log.level, config.log.format)

    async def go() -> None:
        await run(config, config_path=config_path)

    run_unwrapped(go)
    return 0


def run_unwrapped(func: Callable[[], Awaitable[None]]) -> None:
    """``anyio.run`` (on uvloop where installed), with a deliberate :class:`HaasdError`
    raised from inside a task group unwrapped, so the CLI prints one line for it."""
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        options = {}
    else:
        options = {"use_uvloop": True}

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(_quiet_benign_races)
        await func()

    try:
        anyio.run(main, backend_options=options)
    except BaseExceptionGroup as group:
        first = _first_haasd_error(group)
        if first is None:
            raise
        raise first from None


def _quiet_benign_races(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Drop one known-harmless report; pass everything else to the default handler.

    When a connection task is cancelled while its Unix socket turns readable, anyio's
    reader callback (``Future.set_result``) can still run on uvloop after the future was
    cancelled: the loop then reports InvalidStateError although nothing was lost.
    """
    exc = context.get("exception")
    handle = repr(context.get("handle", ""))
    if isinstance(exc, asyncio.InvalidStateError) and "set_result" in handle:
        return
    loop.default_exception_handler(context)


def _first_haasd_error(group: BaseExceptionGroup[BaseException]) -> HaasdError | None:
    for exc in group.exceptions:
        if isinstance(exc, HaasdError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_haasd_error(exc)
            if found is not None:
                return found
    return None
