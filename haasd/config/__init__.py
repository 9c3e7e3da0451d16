"""Configuration: TOML (and ``HAASD_*`` environment variables) into frozen dataclasses.

Parsing happens once, here; everything downstream receives validated values. Every
problem raises :class:`~haasd.errors.ConfigError` naming the file (or environment
variable), the key and the reason. Unknown keys are errors: a typo must not pass
silently.

Secrets are not read at load time: :class:`SecretSource` says where one will come from
and :meth:`SecretSource.load` reads it, in systemd-credential → environment → file order.

The modules: ``_model`` (the dataclasses and constants such as :data:`SCOPES`),
``_secrets`` (:class:`SecretSource`, reading secret files), ``_values`` (the value
parsers, the schema of every key), ``_store`` (``store.url``, a PostgreSQL address, and
the password inline in it), ``_access`` (``[[access]]`` rules) and ``_load``
(:func:`load_config`: the file, then the ``HAASD_*`` environment over it).
"""

from haasd.config._load import access_override_note, load_config
from haasd.config._model import (
    PLAN_REQUESTS_PER_MINUTE,
    SCOPES,
    AccessRule,
    AuthMethod,
    ClusterConfig,
    Config,
    ConsentConfig,
    HaasConfig,
    LogConfig,
    RefreshConfig,
    SocketConfig,
    StoreConfig,
)
from haasd.config._model import STAR_SCOPE_ADVICE as STAR_SCOPE_ADVICE  # not in __all__
from haasd.config._secrets import SecretSource
from haasd.config._values import known_keys, parse_duration
from haasd.loopback import is_loopback

__all__ = [
    "PLAN_REQUESTS_PER_MINUTE",
    "SCOPES",
    "AccessRule",
    "AuthMethod",
    "ClusterConfig",
    "Config",
    "ConsentConfig",
    "HaasConfig",
    "LogConfig",
    "RefreshConfig",
    "SecretSource",
    "SocketConfig",
    "StoreConfig",
    "access_override_note",
    "is_loopback",
    "known_keys",
    "load_config",
    "parse_duration",
]
