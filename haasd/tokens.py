"""The token endpoint's answer, as the HaaS docs give it, parsed and checked.

A success answer looks like::

    {"access_token": "haas_at_…", "token_type": "Bearer", "expires_in": 3600,
     "refresh_token": "haas_rt_…", "scope": "tasks:dispatch status:read",
     "human_id": "usr_maria_42"}

``refresh_token`` may be absent on a refresh (keep the old one, RFC 6749 §6);
``refresh_token_expires_in`` is honoured when a server sends it. Scope tokens are held to
RFC 6749 §3.3 (printable ASCII, no space, ``"`` or ``\\``), tokens to printable ASCII.

A first grant must be right in every field. A refresh answer is read so that a rotation
is never lost: the server has already spent the old refresh token, so a well-formed new
one is kept whatever else is wrong, and a bad field beside it is refused with a warning
(the grant's old value stands in). Errors are :class:`~haasd.errors.TokenResponseError`,
whose message says what was wrong, shows server text escaped — and never a token.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from haasd.errors import TokenResponseError
from haasd.secret import Secret

__all__ = [
    "HUMAN_ID_RE",
    "MAX_TOKEN_LENGTH",
    "TokenResponse",
    "parse_scope",
    "parse_token_response",
    "shown",
]

#: the form of a human id in the HaaS docs (``usr_maria_42``)
HUMAN_ID_RE: Final = re.compile(r"usr_[a-z0-9_]{1,64}")
MAX_TOKEN_LENGTH: Final = 4096
#: an expires_in beyond this is not a HaaS access token (they live an hour)
_MAX_EXPIRES_IN: Final = 366 * 86400
#: RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN: Final = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")
_MAX_SCOPE_LENGTH: Final = 2048
#: RFC 6750 b64token characters, and the printable ASCII servers use beyond them
_TOKEN_CHARS: Final = re.compile(r"[\x21-\x7e]+")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class TokenResponse:
    access_token: Secret
    expires_in: int
    refresh_token: Secret | None
    scope: tuple[str, ...]
    human_id: str
    refresh_token_expires_in: int | None = None
    #: fields of a refresh answer that were refused and replaced by what the grant had
    #: (each message shows the bad value escaped, never a token)
    warnings: tuple[str, ...] = ()


def shown(value: object, limit: int = 80) -> str:
    """``value`` as safe text for a message: escaped (no control character, no lone
    surrogate, ASCII only) and cut to about ``limit`` characters."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _token(data: Mapping[str, Any], name: str) -> Secret:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise TokenResponseError(f"{name} is missing or not a string")
    if len(value) > MAX_TOKEN_LENGTH or not _TOKEN_CHARS.fullmatch(value):
        raise TokenResponseError(
            f"{name} is not a plausible token (too long, or not printable ASCII)"
        )
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


def parse_scope(raw: object) -> tuple[str, ...]:
    """A ``scope`` value: space-separated scope tokens as RFC 6749 §3.3 allows them
    (printable ASCII without space, ``"`` or ``\\``); TokenResponseError if not."""
    if not isinstance(raw, str):
        raise TokenResponseError("scope must be a space-separated string of scopes")
    words = [w for w in raw.split(" ") if w]
    if not words or len(raw) > _MAX_SCOPE_LENGTH:
        raise TokenResponseError(f"scope must name at least one scope, got {shown(raw)}")
    bad = [w for w in words if not _SCOPE_TOKEN.fullmatch(w)]
    if bad:
        raise TokenResponseError(f"scope holds a malformed scope token: {shown(bad[0])}")
    return tuple(dict.fromkeys(words))


def parse_token_response(
    data: object,
    *,
    human_id: str | None = None,
    scope: tuple[str, ...] | None = None,
    default_lifetime: int = 3600,
) -> TokenResponse:
    """Check a decoded JSON answer from ``/token``.

    A first grant (``human_id`` None: a code exchange, an import) must be right in every
    field. A refresh answer (``human_id`` and ``scope`` are the grant's) is read so that
    a rotation is never lost: once its ``refresh_token`` is well formed (or absent: not
    rotated), a bad ``scope``, ``expires_in``, ``token_type``, ``human_id`` or
    ``refresh_token_expires_in`` is refused with a warning and what the grant had (or
    ``default_lifetime``) stands in. A bad ``access_token`` raises TokenResponseError
    carrying the new refresh token, which the caller must keep.
    """
    if not isinstance(data, Mapping):
        raise TokenResponseError("the token response is not a JSON object")
    if human_id is None:
        return _first_grant(data)
    refresh = _token(data, "refresh_token") if data.get("refresh_token") is not None else None
    try:
        access = _token(data, "access_token")
    except TokenResponseError as exc:
        raise TokenResponseError(str(exc), refresh_token=refresh) from None
    warnings: list[str] = []

    def lenient(check: Callable[[], _T], fallback: _T, what: str) -> _T:
        try:
            return check()
        except TokenResponseError as exc:
            warnings.append(f"{exc}; {what}")
            return fallback

    token_type = data.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        warnings.append(f"token_type is {shown(token_type)}, not 'Bearer'; served as Bearer")
    expires_in = lenient(
        lambda: _seconds(data, "expires_in"),
        default_lifetime,
        f"taken as {default_lifetime}s",
    )
    scopes = scope if scope is not None else ()
    if data.get("scope") is not None:
        scopes = lenient(lambda: parse_scope(data.get("scope")), scopes, "kept the old scope")
    raw_human = data.get("human_id", human_id)
    if raw_human != human_id:
        warnings.append(f"human_id is {shown(raw_human)}, not {human_id!r}; kept for {human_id!r}")
    rt_expires_in = None
    if data.get("refresh_token_expires_in") is not None:
        rt_expires_in = lenient(lambda: _seconds(data, "refresh_token_expires_in"), None, "ignored")
    return TokenResponse(
        access_token=access,
        expires_in=expires_in,
        refresh_token=refresh,
        scope=scopes,
        human_id=human_id,
        refresh_token_expires_in=rt_expires_in,
        warnings=tuple(warnings),
    )


def _first_grant(data: Mapping[str, Any]) -> TokenResponse:
    access = _token(data, "access_token")
    token_type = data.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenResponseError("token_type must be 'Bearer'")
    expires_in = _seconds(data, "expires_in")
    scopes = parse_scope(data.get("scope"))
    raw_human = data.get("human_id")
    if not isinstance(raw_human, str) or not HUMAN_ID_RE.fullmatch(raw_human):
        raise TokenResponseError("human_id is missing or not of the form usr_[a-z0-9_]+")
    rt_expires_in = (
        _seconds(data, "refresh_token_expires_in")
        if data.get("refresh_token_expires_in") is not None
        else None
    )
    return TokenResponse(
        access_token=access,
        expires_in=expires_in,
        refresh_token=_token(data, "refresh_token"),
        scope=scopes,
        human_id=raw_human,
        refresh_token_expires_in=rt_expires_in,
    )
