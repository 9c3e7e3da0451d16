"""Small builders from a :class:`~haasd.config.Config` shared by the daemon and the CLI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Final

import anyio
import structlog

from haasd.config import Config
from haasd.coordination import Coordination, InProcess
from haasd.crypto import Key, Sealer
from haasd.errors import (
    ConfigError,
    StoreCorruptError,
    StoreError,
    StoreNewerError,
    WrongKeyError,
)
from haasd.grants import Policy
from haasd.grantstore import GrantStore
from haasd.store import Store, instance_lock

__all__ = ["coordination_of", "open_store", "policy_of", "sealer_of"]

_log: Final = structlog.get_logger("haasd")


def policy_of(config: Config) -> Policy:
    r = config.refresh
    return Policy(
        refresh_fraction=r.refresh_fraction,
        refresh_token_lifetime=r.refresh_token_lifetime,
        reconsent_warning=r.reconsent_warning,
        refresh_idle=r.refresh_idle,
        serve_margin=r.serve_margin,
        on_demand_cooldown=r.on_demand_cooldown,
        on_demand_share=r.on_demand_share,
    )


def sealer_of(config: Config) -> Sealer:
    """The store key from its configured source, as a :class:`Sealer`."""
    source = config.store.key
    try:
        key = Key.from_text(source.load().reveal())
    except ValueError as exc:
        raise ConfigError(source.describe(), source.key, f"not a haasd key: {exc}") from None
    return Sealer(key)


@asynccontextmanager
async def open_store(
    config: Config, *, lock: bool = True, retry_for: float = 0.0
) -> AsyncIterator[GrantStore]:
    """The configured store, open, closed on leaving: the SQLite file (under the instance
    lock unless ``lock`` is False: readers such as ``status --config``), or the PostgreSQL
    database, whose unreachability is retried for ``retry_for`` seconds (``haasd run``
    gives it ``store.connect_timeout``: an orchestrator may start haasd before the
    database)."""
    sealer = sealer_of(config)
    store: GrantStore
    if config.store.url is None:
        async with AsyncExitStack() as stack:
            if lock:
                await stack.enter_async_context(instance_lock(config.store.path))
            store = await Store.open(config.store.path, sealer, writer=lock)
            stack.push_async_callback(store.close)
            yield store
        return
    from haasd.pgstore import PgStore  # psycopg is loaded only for a PostgreSQL store

    source = config.store.password
    password = source.load_optional() if source is not None else None
    deadline, warned = anyio.current_time() + retry_for, False
    while True:
        try:
            pg = await PgStore.open(config.store.url, sealer, password=password)
            break
        except (WrongKeyError, StoreNewerError, StoreCorruptError):
            raise  # no retry mends these
        except StoreError as exc:
            if anyio.current_time() >= deadline:
                if retry_for <= 0:
                    raise
                raise StoreError(f"{exc} (retried for {retry_for:g}s)") from None
            if not warned:  # once: the final error, if it comes, says the rest
                _log.warning(
                    "cannot reach the store yet; retrying", error=str(exc), retry_for=retry_for
                )
                warned = True
            await anyio.sleep(min(1.0, max(0.0, deadline - anyio.current_time())))
    try:
        yield pg
    finally:
        await pg.close()


def coordination_of(config: Config, store: GrantStore) -> Coordination:
    """Leases on PostgreSQL for a store shared by several instances (``store.url``);
    for a SQLite store, the one haasd coordinates with itself."""
    if config.store.url is None:
        return InProcess()
    from haasd.pgstore import PgCoordination, PgStore

    if not isinstance(store, PgStore):  # pragma: no cover - open_store gave the other kind
        raise TypeError("store.url is set but the store is not PostgreSQL's")
    return PgCoordination(
        store, lease=config.cluster.lease, join_within=config.store.connect_timeout
    )
