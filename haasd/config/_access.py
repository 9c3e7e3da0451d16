"""``[[access]]`` rules (or ``HAASD_ACCESS`` as JSON) into :class:`AccessRule` tuples."""

from __future__ import annotations

import grp
import json
import pwd
from collections.abc import Mapping
from typing import Any

from haasd.config._model import AccessRule
from haasd.config._values import _ACCESS_KEYS, _bool, _scopes, _string, _Where
from haasd.errors import ConfigError


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
