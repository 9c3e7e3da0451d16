"""The token endpoint's answer, as the HaaS docs give it, parsed and checked.

A success answer looks like::

    {"access_token": "haas_at_…", "token_type": "Bearer", "expires_in": 3600,
     "refresh_token": "haas_rt_…", "scope": "tasks:dispatch status:read",
     "human_id": "usr_maria_42"}

``refresh_token`` may be absent on a refresh (keep the old one, RFC 6749 §6);
``refresh_token_expires_in`` is honoured when a server sends it. Anything else is a
:class:`~haasd.errors.TokenResponseError` whose message says what was wrong — and never
contains a token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from haasd.errors import TokenResponseError
from haasd.secret import Secret

__all__ = ["HUMAN_ID_RE", "MAX_TOKEN_LENGTH", "TokenResponse", "parse_token_response"]

#: the form of a human id in the HaaS docs (``usr_maria_42``)
HUMAN_ID_RE: Final = re.compile(r"usr_[a-z0-9_]{1,64}")
MAX_TOKEN_LENGTH: Final = 4096
#: an expires_in beyond this is not a HaaS access token (they live an hour)
_MAX_EXPIRES_IN: Final = 366 * 86400


@dataclass(frozen=True, slots=True)
class TokenResponse:
    access_token: Secret
    expires_in: int
    refresh_token: Secret | None
    scope: tuple[str, ...]
    human_id: str
    refresh_token_expires_in: int | None = None


def _token(data: Mapping[str, Any], name: str) -> Secret:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise TokenResponseError(f"{name} is missing or not a string")
    if len(value) > MAX_TOKEN_LENGTH or not value.isprintable() or " " in value:
        raise TokenResponseError(f"{name} is not a plausible token (too long or not printable)")
    return Secret(value)


def _seconds(data: Mapping[str, Any], name: str) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TokenResponseError(
            f"{name} must be a whole number of seconds, got {type(value).__name__}"
        )
    if not 0 < value <= _MAX_EXPIRES_IN:
        raise TokenResponseError(f"{name} must be between 1 and {_MAX_EXPIRES_IN}, got {value}")
    return value


def parse_token_response(
    data: object, *, human_id: str | None = None, scope: tuple[str, ...] | None = None
) -> TokenResponse:
    """Check a decoded JSON answer from ``/token``.

    ``human_id`` and ``scope`` are what a refresh answer falls back on when the server
    leaves them out (they belong to the grant being refreshed).
    """
    if not isinstance(data, Mapping):
        raise TokenResponseError("the token response is not a JSON object")
    access = _token(data, "access_token")
    token_type = data.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenResponseError("token_type must be 'Bearer'")
    expires_in = _seconds(data, "expires_in")
    raw_scope = data.get("scope")
    if raw_scope is None and scope is not None:
        scopes = scope
    elif isinstance(raw_scope, str) and raw_scope.split():
        scopes = tuple(dict.fromkeys(raw_scope.split()))
    else:
        raise TokenResponseError("scope must be a space-separated string of scopes")
    raw_human = data.get("human_id", human_id)
    if not isinstance(raw_human, str) or not HUMAN_ID_RE.fullmatch(raw_human):
        raise TokenResponseError("human_id is missing or not of the form usr_[a-z0-9_]+")
    if human_id is not None and raw_human != human_id:
        raise TokenResponseError(
            f"the answer is for human {raw_human!r}, but the refresh was for {human_id!r}"
        )
    # a refresh answer may leave the refresh token out (RFC 6749 §6); a first grant may not
    refresh = (
        _token(data, "refresh_token")
        if human_id is None or data.get("refresh_token") is not None
        else None
    )
    rt_expires_in = (
        _seconds(data, "refresh_token_expires_in")
        if data.get("refresh_token_expires_in") is not None
        else None
    )
    return TokenResponse(
        access_token=access,
        expires_in=expires_in,
        refresh_token=refresh,
        scope=scopes,
        human_id=raw_human,
        refresh_token_expires_in=rt_expires_in,
    )
