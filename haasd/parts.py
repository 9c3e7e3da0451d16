"""Small builders from a :class:`~haasd.config.Config` shared by the daemon and the CLI."""

from __future__ import annotations

from haasd.config import Config
from haasd.crypto import Key, Sealer
from haasd.errors import ConfigError
from haasd.grants import Policy

__all__ = ["policy_of", "sealer_of"]


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
