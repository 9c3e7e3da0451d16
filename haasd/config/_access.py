"""``[[access]]`` rules (or ``HAASD_ACCESS`` as JSON) into :class:`AccessRule` tuples."""

from __future__ import annotations

import grp
import json
import pwd
from collections.abc import Callable, Mapping
from typing import Any

from haasd.config._model import AccessRule
from haasd.config._values import _ACCESS_KEYS, _bool, _scopes, _string, _Where
from haasd.errors import ConfigError

#: ``error(key, reason)``: the :class:`ConfigError` naming a key of the rule
_Error = Callable[[str, str], ConfigError]


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
    _check_keys(item, error)
    uid = _id_of(item, "uid", "user", _uid_of_user, error)
    gid = _id_of(item, "gid", "group", _gid_of_group, error)
    if uid is None and gid is None:
        raise ConfigError(origin, prefix, "a rule needs uid, user, gid or group")
    humans = _humans(item, error)
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
    return AccessRule(uid, gid, humans, scopes, admin)


def _check_keys(item: Mapping[str, Any], error: _Error) -> None:
    """Every key known, and a peer named one way: uid or user, gid or group."""
    for key in item:
        if key not in _ACCESS_KEYS:
            raise error(key, f"unknown key; known keys: {', '.join(sorted(_ACCESS_KEYS))}")
    if "uid" in item and "user" in item:
        raise error("user", "give uid or user, not both")
    if "gid" in item and "group" in item:
        raise error("group", "give gid or group, not both")


def _id_of(
    item: Mapping[str, Any],
    key: str,
    name_key: str,
    lookup: Callable[[str], int],
    error: _Error,
) -> int | None:
    """The id a rule names under ``key`` (a number), or by name under ``name_key`` (looked
    up on this system), or None. ``name_key`` is also the noun: "user" or "group"."""
    found = None
    if key in item:
        value = item[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise error(key, f"expected a {name_key} id (a whole number >= 0)")
        found = value
    if name_key in item:
        try:
            found = lookup(_string(item[name_key]))
        except (KeyError, ValueError):
            raise error(name_key, f"no such {name_key} {item[name_key]!r} on this system") from None
    return found


def _uid_of_user(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def _gid_of_group(name: str) -> int:
    return grp.getgrnam(name).gr_gid


def _humans(item: Mapping[str, Any], error: _Error) -> tuple[str, ...]:
    """The rule's ``humans``: a non-empty list of human ids or globs."""
    humans = item.get("humans", [])
    if (
        not isinstance(humans, list)
        or not humans
        or not all(isinstance(h, str) and h.strip() for h in humans)
    ):
        raise error("humans", 'expected a non-empty list of human ids or globs, e.g. ["usr_*"]')
    return tuple(humans)
