"""Loading: the file and the ``HAASD_*`` environment → parsed values → dataclasses."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from haasd.config._access import _access_rules
from haasd.config._model import (
    DEFAULT_AUTHORIZE_URL,
    DEFAULT_TOKEN_URL,
    ENV_PREFIX,
    PLAN_REQUESTS_PER_MINUTE,
    Config,
    ConsentConfig,
    HaasConfig,
    LogConfig,
    RefreshConfig,
    SocketConfig,
    StoreConfig,
)
from haasd.config._secrets import SecretSource
from haasd.config._values import _SCHEMA, Parser, _env_name, _Where
from haasd.errors import ConfigError
from haasd.secret import Secret

#: environment variables that carry secrets or belong to clients, not config keys
_ENV_NOT_KEYS: Final = frozenset(
    {"HAASD_CLIENT_SECRET", "HAASD_STORE_KEY", "HAASD_CONFIG", "HAASD_SOCKET", "HAASD_ACCESS"}
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
    return _build(values, from_env, raw.get("access"), env, where, base)


def _collect(
    raw: dict[str, Any], env: Mapping[str, str], where: _Where
) -> tuple[dict[str, Any], set[str]]:
    """Parse every known key from the file, then let ``HAASD_*`` override it."""
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
    from_env: set[str] = set()
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
        from_env.add(env_key)
    return values, from_env


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


def _build(
    values: dict[str, Any],
    from_env: set[str],
    access_raw: Any,
    env: Mapping[str, str],
    where: _Where,
    base: Path,
) -> Config:
    def require(key: str) -> Any:
        if key not in values:
            raise where.error(key, f"required; set it in the config file or as {_env_name(key)}")
        return values[key]

    def path_of(key: str) -> Path | None:
        if key not in values:
            return None
        p = Path(values[key]).expanduser()
        return p if p.is_absolute() or key in from_env else base / p

    environment = values.get("haas.environment", "test")
    inline = values.get("haas.client_secret")
    if inline is not None and environment != "test":
        origin_env = "haas.client_secret" in from_env
        raise where.error(
            "haas.client_secret",
            'an inline client secret is accepted only when environment = "test"; use '
            "client_secret_file, HAASD_CLIENT_SECRET or the systemd credential client_secret",
            from_env=origin_env,
        )
    plan = values.get("haas.plan", "free")
    haas = HaasConfig(
        environment=environment,
        client_id=require("haas.client_id"),
        client_secret=SecretSource(
            key="haas.client_secret",
            credential="client_secret",
            env_var="HAASD_CLIENT_SECRET",
            file=path_of("haas.client_secret_file")
            if "haas.client_secret_file" in values
            else None,
            inline=Secret(inline) if inline is not None else None,
            environ=env,
        ),
        authorize_url=values.get("haas.authorize_url", DEFAULT_AUTHORIZE_URL),
        token_url=values.get("haas.token_url", DEFAULT_TOKEN_URL),
        redirect_uri=require("haas.redirect_uri"),
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
    state_dir = env.get("STATE_DIRECTORY", "/var/lib/haasd").split(":")[0]
    runtime_dir = env.get("RUNTIME_DIRECTORY", "/run/haasd").split(":")[0]
    store = StoreConfig(
        path=path_of("store.path") or Path(state_dir) / "haasd.db",
        key=SecretSource(
            key="store.key_file",
            credential="store.key",
            env_var="HAASD_STORE_KEY",
            file=path_of("store.key_file"),
            environ=env,
        ),
    )
    defaults = RefreshConfig()
    refresh = RefreshConfig(
        refresh_fraction=values.get("refresh.refresh_fraction", defaults.refresh_fraction),
        refresh_token_lifetime=values.get(
            "refresh.refresh_token_lifetime", defaults.refresh_token_lifetime
        ),
        reconsent_warning=values.get("refresh.reconsent_warning", defaults.reconsent_warning),
        refresh_idle=values.get("refresh.refresh_idle", defaults.refresh_idle),
        serve_margin=values.get("refresh.serve_margin", defaults.serve_margin),
        on_demand_cooldown=values.get("refresh.on_demand_cooldown", defaults.on_demand_cooldown),
        on_demand_share=values.get("refresh.on_demand_share", defaults.on_demand_share),
    )
    if refresh.reconsent_warning >= refresh.refresh_token_lifetime:
        raise where.error(
            "refresh.reconsent_warning",
            "must be shorter than refresh.refresh_token_lifetime "
            f"({refresh.reconsent_warning:g}s >= {refresh.refresh_token_lifetime:g}s)",
            from_env="refresh.reconsent_warning" in from_env,
        )
    socket = SocketConfig(
        path=path_of("socket.path") or Path(runtime_dir) / "haasd.sock",
        mode=values.get("socket.mode", 0o660),
    )
    log = LogConfig(level=values.get("log.level", "info"), format=values.get("log.format", "json"))
    access = _access_rules(access_raw, env, where)
    consent_defaults = ConsentConfig()
    consent = ConsentConfig(
        pending_ttl=values.get("consent.pending_ttl", consent_defaults.pending_ttl),
        max_pending=values.get("consent.max_pending", consent_defaults.max_pending),
    )
    replaced = _file_rules(access_raw) if "HAASD_ACCESS" in env else 0
    return Config(where.file, haas, store, refresh, socket, access, log, consent, replaced)


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
