"""Value parsers, the schema of every key, and where a value came from (for errors)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from haasd.config._model import ENV_PREFIX, PLAN_REQUESTS_PER_MINUTE, SCOPES, STAR_SCOPE_ADVICE
from haasd.config._store import parse_store_url
from haasd.errors import ConfigError
from haasd.loopback import is_loopback
from haasd.tokens import MAX_LIFETIME

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


def _lifetime(value: Any) -> int:
    """A duration of whole seconds, from 1s to 366d (an access token's lifetime)."""
    seconds = parse_duration(value)
    if not 1 <= seconds <= MAX_LIFETIME:  # as long as an expires_in haasd accepts
        raise ValueError("must be between 1s and 366d")
    return int(seconds)


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


#: a lease's bounds: renewed a few times a lease, it needs seconds; a long one leaves a
#: dead instance's grants unrefreshed past the reuse grace windows servers offer (~30s)
MIN_LEASE: Final = 3.0
MAX_LEASE: Final = 300.0


def _lease(value: Any) -> float:
    seconds = parse_duration(value)
    if not MIN_LEASE <= seconds <= MAX_LEASE:
        raise ValueError(
            f"must be between {MIN_LEASE:g}s and {MAX_LEASE / 60:g}m; keep it short (the "
            "default is 15s) so a dead instance's grants are taken over in time"
        )
    return seconds


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
        "token_endpoint_auth_method": _choice("client_secret_post", "client_secret_basic"),
        "revocation_url": _url,
        "default_token_lifetime": _lifetime,
    },
    "store": {
        "path": _path,
        "key_file": _path,
        "url": parse_store_url,
        "password_file": _path,
        "connect_timeout": parse_duration,
    },
    "refresh": {
        "refresh_fraction": _fraction,
        "refresh_token_lifetime": parse_duration,
        "reconsent_warning": parse_duration,
        "refresh_idle": parse_duration,
        "serve_margin": parse_duration,
        "on_demand_cooldown": parse_duration,
        "on_demand_share": _fraction,
    },
    "socket": {"path": _path, "mode": _mode},
    "consent": {"pending_ttl": parse_duration, "max_pending": _positive_int},
    "cluster": {"lease": _lease},
    "log": {
        "level": _choice("debug", "info", "warning", "error"),
        "format": _choice("json", "console"),
    },
}
_ACCESS_KEYS: Final = frozenset({"uid", "user", "gid", "group", "humans", "scopes", "admin"})


def known_keys() -> list[str]:
    """Every configuration key, as ``section.key`` (``access.*`` for the rule keys)."""
    keys = [f"{section}.{key}" for section, body in _SCHEMA.items() for key in body]
    return keys + [f"access.{key}" for key in sorted(_ACCESS_KEYS)]
