"""Loading: the file and the ``HAASD_*`` environment → parsed values → dataclasses."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from haasd.config._access import _access_rules
from haasd.config._model import (
    DEFAULT_AUTHORIZE_URL,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TOKEN_URL,
    ENV_PREFIX,
    PLAN_REQUESTS_PER_MINUTE,
    ClusterConfig,
    Config,
    ConsentConfig,
    HaasConfig,
    LogConfig,
    RefreshConfig,
    SocketConfig,
    StoreConfig,
)
from haasd.config._secrets import SecretSource
from haasd.config._store import split_password
from haasd.config._values import _SCHEMA, Parser, _env_name, _Where
from haasd.errors import ConfigError
from haasd.secret import Secret

#: environment variables that carry secrets or belong to clients, not config keys
_ENV_NOT_KEYS: Final = frozenset(
    {
        "HAASD_CLIENT_SECRET",
        "HAASD_STORE_KEY",
        "HAASD_STORE_PASSWORD",
        "HAASD_CONFIG",
        "HAASD_SOCKET",
        "HAASD_ACCESS",
    }
)


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (optional) and ``HAASD_*`` variables into a validated :class:`Config`."""
    env = dict(os.environ if environ is None else environ)
    raw: dict[str, Any] = {}
    file = "environment"
    base = Path.cwd()
    if path is not None:
        file = str(path)
        base = path.resolve().parent
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                file, "(file)", "no such file; pass --config with an existing file"
            ) from None
        except OSError as exc:
            raise ConfigError(file, "(file)", f"cannot read: {exc.strerror}") from exc
        except UnicodeDecodeError:
            raise ConfigError(file, "(file)", "not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(file, "(file)", f"not valid TOML: {exc}") from exc
    where = _Where(file, env)
    values, from_env = _collect(raw, env, where)
    return _build(_Keys(values, from_env, where, base), raw.get("access"), env)


def _collect(
    raw: dict[str, Any], env: Mapping[str, str], where: _Where
) -> tuple[dict[str, Any], set[str]]:
    """Parse every known key from the file, then let ``HAASD_*`` override it."""
    values = _from_file(raw, where)
    from_env = _from_env(env, where)
    values.update(from_env)
    return values, set(from_env)


def _from_file(raw: dict[str, Any], where: _Where) -> dict[str, Any]:
    """The file's keys (but ``[[access]]``), parsed; unknown sections and keys refused."""
    values: dict[str, Any] = {}
    for section, body in raw.items():
        if section == "access":
            continue
        if section not in _SCHEMA:
            known = ", ".join(f"[{s}]" for s in (*_SCHEMA, "[access]"))
            raise where.error(section, f"unknown section; known sections: {known}")
        if not isinstance(body, dict):
            raise where.error(section, "expected a table, e.g. [" + section + "]")
        for key, value in body.items():
            dotted = f"{section}.{key}"
            if key not in _SCHEMA[section]:
                raise where.error(dotted, f"unknown key; known keys: {', '.join(_SCHEMA[section])}")
            values[dotted] = _parse(_SCHEMA[section][key], value, dotted, where, from_env=False)
    return values


def _from_env(env: Mapping[str, str], where: _Where) -> dict[str, Any]:
    """The keys set by ``HAASD_*`` variables, parsed; an unknown key of a section refused."""
    values: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in _ENV_NOT_KEYS:
            continue
        env_key = _env_key(name)
        if env_key is None:
            sections = [f"{ENV_PREFIX}{s.upper()}_" for s in _SCHEMA]
            if any(name.startswith(s) for s in sections):
                raise ConfigError(f"environment variable {name}", name, "unknown key")
            continue
        section, key = env_key.split(".", 1)
        values[env_key] = _parse(_SCHEMA[section][key], value, env_key, where, from_env=True)
    return values


def _env_key(name: str) -> str | None:
    for section, keys in _SCHEMA.items():
        for key in keys:
            if name == _env_name(f"{section}.{key}"):
                return f"{section}.{key}"
    return None


def _parse(parser: Parser, value: Any, key: str, where: _Where, *, from_env: bool) -> Any:
    try:
        return parser(value)
    except ValueError as exc:
        raise where.error(key, str(exc), from_env=from_env) from None


@dataclass(frozen=True, slots=True)
class _Keys:
    """The parsed keys, which of them the environment set, and what paths are relative to."""

    values: dict[str, Any]
    from_env: set[str]
    where: _Where
    base: Path

    def require(self, key: str) -> Any:
        if key not in self.values:
            message = f"required; set it in the config file or as {_env_name(key)}"
            raise self.where.error(key, message)
        return self.values[key]

    def path_of(self, key: str) -> Path | None:
        """The path ``key`` names; relative to the config file's directory if it came from
        the file, as given (relative to the working directory) if from the environment."""
        if key not in self.values:
            return None
        p = Path(self.values[key]).expanduser()
        return p if p.is_absolute() or key in self.from_env else self.base / p

    def section(self, name: str) -> dict[str, Any]:
        """The keys of ``[name]`` that are set, by key: the rest keep the dataclass's
        defaults (declared there, once)."""
        prefix = f"{name}."
        return {k.removeprefix(prefix): v for k, v in self.values.items() if k.startswith(prefix)}

    def error(self, key: str, message: str) -> ConfigError:
        return self.where.error(key, message, from_env=key in self.from_env)


def _build(keys: _Keys, access_raw: Any, env: Mapping[str, str]) -> Config:
    haas = _haas(keys, env)
    runtime_dir = env.get("RUNTIME_DIRECTORY", "/run/haasd").split(":")[0]
    store = _store(keys, env, haas.environment)
    refresh = RefreshConfig(**keys.section("refresh"))
    if refresh.reconsent_warning >= refresh.refresh_token_lifetime:
        raise keys.error(
            "refresh.reconsent_warning",
            "must be shorter than refresh.refresh_token_lifetime "
            f"({refresh.reconsent_warning:g}s >= {refresh.refresh_token_lifetime:g}s)",
        )
    socket = SocketConfig(
        path=keys.path_of("socket.path") or Path(runtime_dir) / "haasd.sock",
        mode=keys.values.get("socket.mode", 0o660),
    )
    log = LogConfig(**keys.section("log"))
    access = _access_rules(access_raw, env, keys.where)
    consent = ConsentConfig(**keys.section("consent"))
    replaced = _file_rules(access_raw) if "HAASD_ACCESS" in env else 0
    cluster = _cluster(keys, store)
    return Config(
        keys.where.file, haas, store, refresh, socket, access, log, consent, cluster, replaced
    )


def _cluster(keys: _Keys, store: StoreConfig) -> ClusterConfig:
    """``[cluster]``: only for several instances on a PostgreSQL store."""
    given = keys.section("cluster")
    if given and store.url is None:
        key = f"cluster.{min(given)}"
        raise keys.error(key, "only for several instances on a PostgreSQL store (store.url)")
    return ClusterConfig(**given)


def _store(keys: _Keys, env: Mapping[str, str], environment: str) -> StoreConfig:
    """``[store]``: a SQLite file (``path``, the default) or a PostgreSQL ``url``, never
    both; the sealing key; for PostgreSQL, where its password comes from."""
    state_dir = env.get("STATE_DIRECTORY", "/var/lib/haasd").split(":")[0]
    default_path = Path(state_dir) / "haasd.db"
    key = SecretSource(
        key="store.key_file",
        credential="store.key",
        env_var="HAASD_STORE_KEY",
        file=keys.path_of("store.key_file"),
        environ=env,
    )
    url = keys.values.get("store.url")
    if url is None:
        for postgres_only in ("store.password_file", "store.connect_timeout"):
            if postgres_only in keys.values:
                raise keys.error(postgres_only, "only for a PostgreSQL store (store.url)")
        return StoreConfig(path=keys.path_of("store.path") or default_path, key=key)
    if "store.path" in keys.values:
        raise keys.error(
            "store.url",
            "store.path is set too; give one of them: store.url for a PostgreSQL store, "
            "store.path for a SQLite file",
        )
    url, inline = split_password(url)
    if inline is not None and environment != "test":
        raise keys.error(
            "store.url",
            'a password inline in the URL is accepted only when haas.environment = "test"; '
            "use store.password_file, HAASD_STORE_PASSWORD or the systemd credential "
            "store.password",
        )
    password = SecretSource(
        key="store.password_file",
        credential="store.password",
        env_var="HAASD_STORE_PASSWORD",
        file=keys.path_of("store.password_file"),
        inline=Secret(inline) if inline is not None else None,
        environ=env,
    )
    timeout = keys.values.get("store.connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    return StoreConfig(default_path, key, url, password, timeout)


def _haas(keys: _Keys, env: Mapping[str, str]) -> HaasConfig:
    """``[haas]``: the authorization server, the client and its secret, the plan."""
    values = keys.values
    environment = values.get("haas.environment", "test")
    inline = values.get("haas.client_secret")
    if inline is not None and environment != "test":
        raise keys.error(
            "haas.client_secret",
            'an inline client secret is accepted only when environment = "test"; use '
            "client_secret_file, HAASD_CLIENT_SECRET or the systemd credential client_secret",
        )
    plan = values.get("haas.plan", "free")
    return HaasConfig(
        environment=environment,
        client_id=keys.require("haas.client_id"),
        client_secret=SecretSource(
            key="haas.client_secret",
            credential="client_secret",
            env_var="HAASD_CLIENT_SECRET",
            file=keys.path_of("haas.client_secret_file"),
            inline=Secret(inline) if inline is not None else None,
            environ=env,
        ),
        authorize_url=values.get("haas.authorize_url", DEFAULT_AUTHORIZE_URL),
        token_url=values.get("haas.token_url", DEFAULT_TOKEN_URL),
        redirect_uri=keys.require("haas.redirect_uri"),
        scopes=values.get("haas.scopes", ("tasks:dispatch", "status:read")),
        plan=plan,
        requests_per_minute=values.get("haas.requests_per_minute", PLAN_REQUESTS_PER_MINUTE[plan]),
        token_request_format=values.get("haas.token_request_format", "json"),
        token_endpoint_auth_method=values.get(
            "haas.token_endpoint_auth_method", "client_secret_post"
        ),
        revocation_url=values.get("haas.revocation_url"),
        default_token_lifetime=values.get("haas.default_token_lifetime", 3600),
    )


def _file_rules(access_raw: Any) -> int:
    """How many ``[[access]]`` rules the file holds (a malformed value counts as one)."""
    if access_raw is None:
        return 0
    return len(access_raw) if isinstance(access_raw, list) else 1


def access_override_note(config: Config) -> str | None:
    """What to tell the operator about where the access rules came from: a line when
    ``HAASD_ACCESS`` replaced rules of the config file (it replaces them all, never
    adds to them), else None. ``check-config`` prints it; ``haasd run`` logs it."""
    if not config.access_replaced:
        return None
    return (
        f"HAASD_ACCESS replaces the {config.access_replaced} [[access]] rule(s) of {config.source}"
    )
