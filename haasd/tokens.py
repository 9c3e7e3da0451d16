"""The token endpoint's answer, as the HaaS docs give it, parsed and checked.

A success answer looks like::

    {"access_token": "haas_at_…", "token_type": "Bearer", "expires_in": 3600,
     "refresh_token": "haas_rt_…", "scope": "tasks:dispatch status:read",
     "human_id": "usr_maria_42"}

A plain RFC 6749 server (§5.1) may leave out what the HaaS docs always send: no
``scope`` means the scope requested, no ``expires_in`` means ``default_lifetime``
(``TokenResponse.lifetime_defaulted`` says so), no ``human_id`` means the human the
consent named (:class:`~haasd.errors.UnnamedHumanError` if it named none), and no
``refresh_token`` on a refresh means the old one is kept (§6). ``token_type`` is matched
case-insensitively; ``refresh_token_expires_in`` is honoured when a server sends it. Scope
tokens are held to RFC 6749 §3.3 (printable ASCII, no space, ``"`` or ``\\``), access
tokens to printable ASCII without space (a Bearer header carries them), refresh tokens to
RFC 6749's VSCHAR (printable ASCII and space: only a request body carries them).

A first grant (:func:`parse_first_grant`) must be right in every field it has. A refresh
answer (:func:`parse_refresh_answer`) is read so that a rotation is never lost: the
server has already spent the old refresh token, so a well-formed new one is kept
whatever else is wrong, and a bad field beside it is refused with a warning (the grant's
old value stands in). Errors are :class:`~haasd.errors.TokenResponseError`, whose message
says what was wrong, shows server text escaped — and never a token; whenever the answer
carried a well-formed refresh token, the error carries it (``refresh_token``) so that
no token the server issued is orphaned.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from haasd.errors import TokenResponseError, UnnamedHumanError
from haasd.secret import Secret

__all__ = [
    "DEFAULT_LIFETIME",
    "HUMAN_ID_RE",
    "MAX_LIFETIME",
    "MAX_TOKEN_LENGTH",
    "TokenResponse",
    "parse_first_grant",
    "parse_refresh_answer",
    "parse_scope",
    "parse_token_response",
    "shown",
]

#: the form of a human id in the HaaS docs (``usr_maria_42``)
HUMAN_ID_RE: Final = re.compile(r"usr_[a-z0-9_]{1,64}")
MAX_TOKEN_LENGTH: Final = 4096
#: seconds an access token is taken to live when the answer has no ``expires_in``
DEFAULT_LIFETIME: Final = 3600
#: an expires_in beyond this is not a HaaS access token (they live an hour)
MAX_LIFETIME: Final = 366 * 86400
#: RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN: Final = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")
_MAX_SCOPE_LENGTH: Final = 2048
#: RFC 6750 b64token characters, and the printable ASCII servers use beyond them
_TOKEN_CHARS: Final = re.compile(r"[\x21-\x7e]+")
#: RFC 6749 A.17: refresh-token = 1*VSCHAR (%x20-7E). Only ever sent back in a request
#: body, never in a header, so a space in it is as good as any other character
_REFRESH_CHARS: Final = re.compile(r"[\x20-\x7e]+")
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
    #: the answer had no ``expires_in``: ``expires_in`` is the default lifetime
    lifetime_defaulted: bool = False


def shown(value: object, limit: int = 80) -> str:
    """``value`` as safe text for a message: escaped (no control character, no lone
    surrogate, ASCII only) and cut to about ``limit`` characters."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _token(data: Mapping[str, Any], name: str) -> Secret:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise TokenResponseError(f"{name} is missing or not a string")
    chars = _REFRESH_CHARS if name == "refresh_token" else _TOKEN_CHARS
    if len(value) > MAX_TOKEN_LENGTH or not chars.fullmatch(value):
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
    if not 0 < value <= MAX_LIFETIME:
        raise TokenResponseError(f"{name} must be between 1 and {MAX_LIFETIME}, got {value}")
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
    default_lifetime: int = DEFAULT_LIFETIME,
) -> TokenResponse:
    """A refresh answer when ``human_id`` is given (it and ``scope`` are the grant's),
    else a first grant: :func:`parse_refresh_answer` or :func:`parse_first_grant`."""
    if human_id is None:
        return parse_first_grant(data, scope=scope, default_lifetime=default_lifetime)
    return parse_refresh_answer(
        data, human_id=human_id, scope=scope, default_lifetime=default_lifetime
    )


def parse_first_grant(
    data: object,
    *,
    human_id: str | None = None,
    scope: tuple[str, ...] | None = None,
    default_lifetime: int = DEFAULT_LIFETIME,
) -> TokenResponse:
    """Check the answer to a code exchange (or one given to ``haasd import``).

    ``human_id`` and ``scope`` are what the consent asked for; they stand in for an
    answer that leaves ``human_id`` or ``scope`` out (RFC 6749 §5.1). The answer's own
    ``human_id`` wins when it has one: a different human may have approved, which the
    caller reports. Nobody naming the human raises :class:`UnnamedHumanError`; any other
    fault a TokenResponseError — each carrying the answer's refresh token if well formed.
    """
    if not isinstance(data, Mapping):
        raise TokenResponseError("the token response is not a JSON object")
    _check_lifetime(default_lifetime)
    issued = _well_formed(data, "refresh_token")
    try:
        return _first_grant(data, issued, human_id, scope, default_lifetime)
    except TokenResponseError as exc:
        if exc.refresh_token is None:
            exc.refresh_token = issued
        raise


def parse_refresh_answer(
    data: object,
    *,
    human_id: str,
    scope: tuple[str, ...] | None = None,
    default_lifetime: int = DEFAULT_LIFETIME,
) -> TokenResponse:
    """Check a refresh answer for the grant of ``human_id``, which holds ``scope``.

    It is read so that a rotation is never lost: once its ``refresh_token`` is well
    formed (or absent: not rotated, §6), a bad ``scope``, ``expires_in``, ``token_type``,
    ``human_id`` or ``refresh_token_expires_in`` is refused with a warning and what the
    grant had (or ``default_lifetime``) stands in. A bad ``access_token`` raises
    TokenResponseError carrying the new refresh token, which the caller must keep.
    """
    if not isinstance(data, Mapping):
        raise TokenResponseError("the token response is not a JSON object")
    _check_lifetime(default_lifetime)
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
    if not _is_bearer(token_type):
        warnings.append(f"token_type is {shown(token_type)}, not 'Bearer'; served as Bearer")
    defaulted = data.get("expires_in") is None
    expires_in = _lenient_lifetime(data, default_lifetime, warnings)
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
        lifetime_defaulted=defaulted,
    )


def _first_grant(
    data: Mapping[str, Any],
    issued: Secret | None,
    human_id: str | None,
    scope: tuple[str, ...] | None,
    default_lifetime: int,
) -> TokenResponse:
    access = _token(data, "access_token")
    token_type = data.get("token_type")
    if not _is_bearer(token_type):
        raise TokenResponseError(f"token_type must be 'Bearer', got {shown(token_type)}")
    expires_in = _lifetime(data, default_lifetime)
    if data.get("scope") is not None:
        scopes = parse_scope(data.get("scope"))
    elif scope:
        scopes = scope  # §5.1: omitted because it is the scope requested
    else:
        raise TokenResponseError("scope is missing, and no requested scope stands in for it")
    named = _named_human(data.get("human_id"), human_id)
    rt_expires_in = (
        _seconds(data, "refresh_token_expires_in")
        if data.get("refresh_token_expires_in") is not None
        else None
    )
    return TokenResponse(
        access_token=access,
        expires_in=expires_in,
        refresh_token=issued if issued is not None else _token(data, "refresh_token"),
        scope=scopes,
        human_id=named,
        refresh_token_expires_in=rt_expires_in,
        lifetime_defaulted=data.get("expires_in") is None,
    )


def _named_human(raw: object, named: str | None) -> str:
    """The answer's human, else the consent's; UnnamedHumanError if neither names one."""
    if raw is None:
        if named is None:
            raise UnnamedHumanError()
        return named
    if not isinstance(raw, str) or not HUMAN_ID_RE.fullmatch(raw):
        raise TokenResponseError(f"human_id is not of the form usr_[a-z0-9_]+: {shown(raw)}")
    return raw


def _well_formed(data: Mapping[str, Any], name: str) -> Secret | None:
    """The token ``name`` if the answer has it well formed, else None."""
    try:
        return _token(data, name)
    except TokenResponseError:
        return None


def _lifetime(data: Mapping[str, Any], default_lifetime: int) -> int:
    """``expires_in``, or ``default_lifetime`` when the answer leaves it out (§5.1).

    Never longer than the server said: a number of seconds in a string (some servers
    send ``"3599"``) is read as such; zero or less means the token is already expired
    (a reuse-grace replay of a token whose time ran out says 0): it is never served and
    the grant is refreshed at once; more than :data:`MAX_LIFETIME` is capped to it.
    Anything else is a :class:`TokenResponseError`."""
    value = data.get("expires_in")
    if value is None:
        return default_lifetime
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,12}\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TokenResponseError(
            f"expires_in must be a whole number of seconds, got {type(value).__name__}"
        )
    return max(0, min(value, MAX_LIFETIME))


def _lenient_lifetime(data: Mapping[str, Any], default_lifetime: int, warnings: list[str]) -> int:
    """A refresh answer's lifetime (:func:`_lifetime`); what is not a number at all is
    taken as ``default_lifetime``, and either way a warning says what was read."""
    try:
        lifetime = _lifetime(data, default_lifetime)
    except TokenResponseError as exc:
        warnings.append(f"{exc}; taken as {default_lifetime}s")
        return default_lifetime
    if (note := _lifetime_note(data, lifetime)) is not None:
        warnings.append(note)
    return lifetime


def _lifetime_note(data: Mapping[str, Any], lifetime: int) -> str | None:
    """A warning when ``expires_in`` was read as other than it says (expired, capped)."""
    raw = data.get("expires_in")
    if raw is None or lifetime not in (0, MAX_LIFETIME) or str(raw).strip() == str(lifetime):
        return None
    if lifetime == 0:
        return f"expires_in is {shown(raw)}: the token is taken as expired and refreshed"
    return f"expires_in is {shown(raw)}: capped to {MAX_LIFETIME}s"


def _check_lifetime(default_lifetime: int) -> None:
    if not 0 < default_lifetime <= MAX_LIFETIME:
        raise ValueError(f"default_lifetime must be between 1 and {MAX_LIFETIME} seconds")


def _is_bearer(token_type: object) -> bool:
    """RFC 6749 §5.1: the token type is case-insensitive."""
    return isinstance(token_type, str) and token_type.lower() == "bearer"
