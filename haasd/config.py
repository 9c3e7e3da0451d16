"""Configuration: TOML (and ``HAASD_*`` environment variables) into frozen dataclasses.

Parsing happens once, here; everything downstream receives validated values. Every
problem raises :class:`~haasd.errors.ConfigError` naming the file (or environment
variable), the key and the reason. Unknown keys are errors: a typo must not pass
silently.

Secrets are not read at load time: :class:`SecretSource` says where one will come from
and :meth:`SecretSource.load` reads it, in systemd-credential → environment → file order.
"""

from __future__ import annotations

import grp
import ipaddress
import json
import os
import pwd
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from haasd.errors import ConfigError
from haasd.secret import Secret

__all__ = [
    "PLAN_REQUESTS_PER_MINUTE",
    "SCOPES",
    "AccessRule",
    "Config",
    "ConsentConfig",
    "HaasConfig",
    "LogConfig",
    "RefreshConfig",
    "SecretSource",
    "SocketConfig",
    "StoreConfig",
    "is_loopback",
    "known_keys",
    "load_config",
    "parse_duration",
]

#: The scopes the HaaS docs list.
SCOPES: Final = (
    "status:read",
    "tasks:dispatch",
    "tasks:read",
    "communication:realtime",
    "profile:read",
)
#: Requests per minute by plan, from the HaaS docs' rate-limit table.
PLAN_REQUESTS_PER_MINUTE: Final = {"free": 60, "pro": 300, "enterprise": 1000}

STAR_SCOPE_ADVICE: Final = (
    "'*' is not a scope: request the minimum you need "
    "(requesting * makes most humans close the authorization page)"
)
ENV_PREFIX: Final = "HAASD_"
DEFAULT_AUTHORIZE_URL: Final = "https://auth.api4human.com/authorize"
DEFAULT_TOKEN_URL: Final = "https://auth.api4human.com/token"  # noqa: S105 - a URL

Environment = Literal["test", "live"]


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where a secret comes from; :meth:`load` reads it.

    Order: ``$CREDENTIALS_DIRECTORY/<credential>`` (systemd ``LoadCredential=``), then the
    environment variable, then ``file`` from the configuration, then ``inline`` (only ever
    set for a test-mode client secret).
    """

    key: str  # the config key, for error messages, e.g. "haas.client_secret"
    credential: str
    env_var: str
    file: Path | None = None
    inline: Secret | None = field(default=None, repr=False)
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def describe(self) -> str:
        """Which source :meth:`load` will use, without reading it."""
        creds = self.environ.get("CREDENTIALS_DIRECTORY")
        if creds and (Path(creds) / self.credential).exists():
            return f"systemd credential {self.credential!r}"
        if self.environ.get(self.env_var):
            return f"environment variable {self.env_var}"
        if self.file is not None:
            return f"file {self.file}"
        if self.inline is not None:
            return "inline in the config file"
        return "nowhere"

    def load(self) -> Secret:
        creds = self.environ.get("CREDENTIALS_DIRECTORY")
        if creds:
            path = Path(creds) / self.credential
            if path.exists():
                # systemd makes credential files private to the service; no mode check
                return Secret(_read_secret(path, self.key, check_mode=False))
        value = self.environ.get(self.env_var)
        if value:
            return Secret(value.strip())
        if self.file is not None:
            return Secret(_read_secret(self.file, self.key, check_mode=True))
        if self.inline is not None:
            return self.inline
        raise ConfigError(
            "configuration",
            self.key,
            f"no secret given: set {self.env_var}, pass the systemd credential "
            f"{self.credential!r}, or name a file in the config",
        )


def _read_secret(path: Path, key: str, *, check_mode: bool) -> str:
    try:
        st = path.stat()
        if check_mode and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                str(path),
                key,
                f"secret file is readable by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}",
            )
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(str(path), key, f"cannot read secret file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), key, "secret file is not UTF-8 text") from exc
    if not text:
        raise ConfigError(str(path), key, "secret file is empty")
    return text


@dataclass(frozen=True, slots=True)
class HaasConfig:
    environment: Environment
    client_id: str
    client_secret: SecretSource
    authorize_url: str
    token_url: str
    redirect_uri: str
    scopes: tuple[str, ...]
    plan: str
    requests_per_minute: int
    token_request_format: Literal["json", "form"]


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: Path
    key: SecretSource


@dataclass(frozen=True, slots=True)
class RefreshConfig:
    refresh_fraction: float = 0.75
    refresh_token_lifetime: float = 30 * 86400.0
    reconsent_warning: float = 7 * 86400.0
    refresh_idle: float = 86400.0


@dataclass(frozen=True, slots=True)
class SocketConfig:
    path: Path
    mode: int = 0o660


@dataclass(frozen=True, slots=True)
class ConsentConfig:
    #: how long a started consent waits for the human before it is abandoned
    pending_ttl: float = 900.0
    #: the most consents that may be pending at once
    max_pending: int = 1000


@dataclass(frozen=True, slots=True)
class AccessRule:
    """Which peers (by uid and/or gid) may have which humans' tokens."""

    uid: int | None
    gid: int | None
    humans: tuple[str, ...]
    scopes: tuple[str, ...] | None  # None: any scope the grant holds
    admin: bool


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    haas: HaasConfig
    store: StoreConfig
    refresh: RefreshConfig
    socket: SocketConfig
    access: tuple[AccessRule, ...]
    log: LogConfig
    consent: ConsentConfig = ConsentConfig()


# --- value parsers -----------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> float:
    """``90``, ``"90s"``, ``"15m"``, ``"1h30m"``, ``"30d"`` → seconds. ValueError if not."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as 90, "90s", "15m", "1h" or "30d"')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text.isdigit():
            seconds = float(text)
        else:
            pos, seconds = 0, 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNIT[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError(
                    f"{value!r} is not a duration; use seconds or a string such as "
                    '"90s", "15m", "1h" or "30d"'
                )
    else:
        raise ValueError('expected a duration such as 90, "90s", "15m", "1h" or "30d"')
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


class _Where:
    """Names the place a value came from in errors."""

    __slots__ = ("env", "file")

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env

    def error(self, key: str, reason: str, *, from_env: bool = False) -> ConfigError:
        origin = f"environment variable {_env_name(key)}" if from_env else self.file
        return ConfigError(origin, key, reason)


def _env_name(key: str) -> str:
    return ENV_PREFIX + key.replace(".", "_").upper()


Parser = Callable[[Any], Any]


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value.strip()


def _choice(*choices: str) -> Parser:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError("expected one of " + ", ".join(repr(c) for c in choices))
        return str(value)

    return parse


def _url(value: Any) -> str:
    text = _string(value)
    parts = urlsplit(text)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{text!r} is not an absolute http(s) URL")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(
            f"{text!r} uses plain http; use https (plain http is allowed only for a "
            "loopback host: 127.0.0.0/8, ::1 or localhost)"
        )
    return text


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: where plain http is acceptable."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _scopes(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ValueError("expected a list of scope strings")
    if "*" in value:
        raise ValueError(STAR_SCOPE_ADVICE)
    unknown = [s for s in value if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}; known scopes: {', '.join(SCOPES)}")
    if not value:
        raise ValueError("expected at least one scope")
    return tuple(dict.fromkeys(value))


def _positive_int(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("expected a positive whole number")
    return value


def _fraction(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError("expected a number between 0 and 1") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ValueError("must be between 0 and 1 (exclusive), e.g. 0.75")
    return float(value)


def _mode(value: Any) -> int:
    text = value if isinstance(value, str) else None
    if text is None or not re.fullmatch(r"0?[0-7]{3}", text.strip()):
        raise ValueError('expected an octal mode as a string, e.g. "0660"')
    mode = int(text, 8)
    if mode & 0o007:
        raise ValueError('the socket must not be reachable by others; use e.g. "0660"')
    return mode


def _path(value: Any) -> str:
    return _string(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ValueError("expected true or false")


_SCHEMA: Final[dict[str, dict[str, Parser]]] = {
    "haas": {
        "environment": _choice("test", "live"),
        "client_id": _string,
        "client_secret": _string,
        "client_secret_file": _path,
        "authorize_url": _url,
        "token_url": _url,
        "redirect_uri": _url,
        "scopes": _scopes,
        "plan": _choice(*PLAN_REQUESTS_PER_MINUTE),
        "requests_per_minute": _positive_int,
        "token_request_format": _choice("json", "form"),
    },
    "store": {"path": _path, "key_file": _path},
    "refresh": {
        "refresh_fraction": _fraction,
        "refresh_token_lifetime": parse_duration,
        "reconsent_warning": parse_duration,
        "refresh_idle": parse_duration,
    },
    "socket": {"path": _path, "mode": _mode},
    "consent": {"pending_ttl": parse_duration, "max_pending": _positive_int},
    "log": {
        "level": _choice("debug", "info", "warning", "error"),
        "format": _choice("json", "console"),
    },
}
_ACCESS_KEYS: Final = frozenset({"uid", "user", "gid", "group", "humans", "scopes", "admin"})
#: environment variables that carry secrets or belong to clients, not config keys
_ENV_NOT_KEYS: Final = frozenset(
    {"HAASD_CLIENT_SECRET", "HAASD_STORE_KEY", "HAASD_CONFIG", "HAASD_SOCKET", "HAASD_ACCESS"}
)


def known_keys() -> list[str]:
    """Every configuration key, as ``section.key`` (``access.*`` for the rule keys)."""
    keys = [f"{section}.{key}" for section, body in _SCHEMA.items() for key in body]
    return keys + [f"access.{key}" for key in sorted(_ACCESS_KEYS)]


# --- loading ------------------------------------------------------------------------------


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
    return Config(where.file, haas, store, refresh, socket, access, log, consent)


def _access_rules(raw: Any, env: Mapping[str, str], where: _Where) -> tuple[AccessRule, ...]:
    origin = where.file
    if "HAASD_ACCESS" in env:
        origin = "environment variable HAASD_ACCESS"
        try:
            raw = json.loads(env["HAASD_ACCESS"])
        except json.JSONDecodeError as exc:
            raise ConfigError(origin, "access", f"not valid JSON: {exc.msg}") from None
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(origin, "access", "expected a list of rules ([[access]] tables)")
    return tuple(_access_rule(i, item, origin) for i, item in enumerate(raw))


def _access_rule(index: int, item: Any, origin: str) -> AccessRule:
    prefix = f"access[{index}]"

    def error(key: str, reason: str) -> ConfigError:
        return ConfigError(origin, f"{prefix}.{key}", reason)

    if not isinstance(item, dict):
        raise ConfigError(origin, prefix, "expected a table with uid or user, humans, ...")
    for key in item:
        if key not in _ACCESS_KEYS:
            raise error(key, f"unknown key; known keys: {', '.join(sorted(_ACCESS_KEYS))}")
    if "uid" in item and "user" in item:
        raise error("user", "give uid or user, not both")
    if "gid" in item and "group" in item:
        raise error("group", "give gid or group, not both")
    uid = gid = None
    if "uid" in item:
        if isinstance(item["uid"], bool) or not isinstance(item["uid"], int) or item["uid"] < 0:
            raise error("uid", "expected a user id (a whole number >= 0)")
        uid = item["uid"]
    if "user" in item:
        try:
            uid = pwd.getpwnam(_string(item["user"])).pw_uid
        except (KeyError, ValueError):
            raise error("user", f"no such user {item['user']!r} on this system") from None
    if "gid" in item:
        if isinstance(item["gid"], bool) or not isinstance(item["gid"], int) or item["gid"] < 0:
            raise error("gid", "expected a group id (a whole number >= 0)")
        gid = item["gid"]
    if "group" in item:
        try:
            gid = grp.getgrnam(_string(item["group"])).gr_gid
        except (KeyError, ValueError):
            raise error("group", f"no such group {item['group']!r} on this system") from None
    if uid is None and gid is None:
        raise ConfigError(origin, prefix, "a rule needs uid, user, gid or group")
    humans = item.get("humans", [])
    if (
        not isinstance(humans, list)
        or not humans
        or not all(isinstance(h, str) and h.strip() for h in humans)
    ):
        raise error("humans", 'expected a non-empty list of human ids or globs, e.g. ["usr_*"]')
    scopes = None
    if "scopes" in item:
        try:
            scopes = _scopes(item["scopes"])
        except ValueError as exc:
            raise error("scopes", str(exc)) from None
    try:
        admin = _bool(item.get("admin", False))
    except ValueError as exc:
        raise error("admin", str(exc)) from None
    return AccessRule(uid, gid, tuple(humans), scopes, admin)
