"""The OAuth side of a consent, without I/O: state, PKCE, the URL, scopes, the callback.

Pure functions over strings (randomness from :mod:`secrets` aside), so every rule here is
a unit test away.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from haasd.config import SCOPES, STAR_SCOPE_ADVICE
from haasd.errors import ConsentRequestError, ScopeError
from haasd.loopback import loopback_port, with_port
from haasd.secret import Secret
from haasd.tokens import HUMAN_ID_RE

__all__ = [
    "CALLBACK_FIELDS",
    "Callback",
    "authorization_url",
    "check_callback",
    "check_human_id",
    "code_challenge",
    "consent_id",
    "loopback_port",
    "new_state",
    "new_verifier",
    "parse_callback",
    "redirect_matches",
    "resolve_scopes",
    "state_id",
    "text_field",
    "with_port",
]

#: random octets behind a state and a PKCE verifier (RFC 7636 §4.1: 32 → 43 characters)
RANDOM_OCTETS: Final = 32
_MAX_CALLBACK: Final = 8192
_MAX_PARAMS: Final = 32
#: per field of a callback: the longest value taken, and whether it must be ASCII
#: (RFC 6749 Appendix A: state and code are VSCHAR, error NQSCHAR; the description is
#: only ever shown, so any printable text)
CALLBACK_FIELDS: Final = {
    "state": (512, True),
    "code": (4096, True),
    "error": (128, True),
    "error_description": (1024, False),
}


def new_state() -> str:
    """A fresh OAuth ``state``: 256 random bits, base64url — never starting with ``-``, so
    it can be pasted after ``haasd consent finish --state`` as it is."""
    while (state := secrets.token_urlsafe(RANDOM_OCTETS)).startswith("-"):
        pass
    return state


def new_verifier() -> Secret:
    """A fresh PKCE ``code_verifier``: 32 random octets, base64url without padding."""
    return Secret(secrets.token_urlsafe(RANDOM_OCTETS))


def code_challenge(verifier: Secret) -> str:
    """``BASE64URL(SHA256(verifier))`` without padding: the S256 challenge (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.reveal().encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def state_id(state: str) -> str:
    """The name a state is stored under: its SHA-256, hex. The state itself is not kept."""
    return hashlib.sha256(state.encode("utf-8")).hexdigest()


def consent_id(state_id: str) -> str:
    """A short public name for one consent, for events and logs (the state stays secret)."""
    return state_id[:16]


def authorization_url(
    authorize_url: str,
    *,
    client_id: str,
    redirect_uri: str,
    scope: Sequence[str],
    state: str,
    challenge: str,
    login_hint: str | None,
) -> str:
    """``authorize_url`` with the request's parameters added to any it already has."""
    params = {
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "scope": " ".join(scope),
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if login_hint is not None:
        params["login_hint"] = login_hint  # OpenID Connect Core §3.1.2.1
    parts = urlsplit(authorize_url)
    query = urlencode(params, quote_via=quote)
    return urlunsplit(parts._replace(query=f"{parts.query}&{query}" if parts.query else query))


def text_field(name: str, value: object, limit: int, *, ascii: bool = False) -> str:
    """``value`` if it is a non-empty string of at most ``limit`` printable characters
    (ASCII only, with ``ascii``); else ConsentRequestError naming the field ``name``.

    Printable rules out control characters (an ANSI escape reaching a terminal), and lone
    surrogates, the one kind of string that cannot be encoded to UTF-8.
    """
    if not isinstance(value, str) or not value:
        raise ConsentRequestError(f"{name} must be a non-empty string")
    if len(value) > limit:
        raise ConsentRequestError(f"{name} is too long (at most {limit} characters)")
    if not value.isprintable():
        raise ConsentRequestError(
            f"{name} holds a character that is not printable (a control character, or a "
            "lone surrogate that no UTF-8 can carry)"
        )
    if ascii and not value.isascii():
        raise ConsentRequestError(f"{name} must be ASCII (RFC 6749 Appendix A)")
    return value


def check_callback(
    state: str, code: str | None, error: str | None, error_description: str | None
) -> Callback:
    """What a callback carries, each field checked (:data:`CALLBACK_FIELDS`); exactly one
    of ``code`` and ``error``, and a description only with an error. ConsentRequestError
    names what is wrong."""
    given = {"state": state, "code": code, "error": error, "error_description": error_description}
    for name, value in given.items():
        if value is not None or name == "state":
            limit, ascii = CALLBACK_FIELDS[name]
            text_field(name, value, limit, ascii=ascii)
    if (code is None) == (error is None):
        raise ConsentRequestError("a callback carries either a code or an error")
    if error_description is not None and error is None:
        raise ConsentRequestError("error_description goes with error")
    return Callback(state, code, error, error_description)


def check_human_id(human_id: str) -> str:
    if not HUMAN_ID_RE.fullmatch(human_id):
        raise ConsentRequestError(
            f"{human_id!r} is not a human id (expected the form usr_[a-z0-9_]+)"
        )
    return human_id


def resolve_scopes(
    requested: Sequence[str] | None,
    configured: Sequence[str],
    previous: Sequence[str] | None = None,
) -> tuple[str, ...]:
    """The scopes to ask for: ``requested``, else the grant's (``previous``), else config's.

    The configured scopes are the ceiling: a request may narrow them, never widen; ``*``
    and unknown scopes are refused. A previous grant's scopes beyond today's configuration
    are dropped, not asked for again.
    """
    if requested is None:
        kept = [s for s in previous or () if s in configured]
        return tuple(dict.fromkeys(kept or configured))
    if isinstance(requested, str):
        requested = requested.replace(",", " ").split()
    scopes = tuple(dict.fromkeys(s.strip() for s in requested if s.strip()))
    if "*" in scopes:
        raise ScopeError("invalid_scope", STAR_SCOPE_ADVICE, ("*",))
    if unknown := tuple(s for s in scopes if s not in SCOPES):
        raise ScopeError(
            "invalid_scope",
            f"unknown scope {' '.join(unknown)}; known scopes: {' '.join(SCOPES)}",
            unknown,
        )
    if not scopes:
        raise ScopeError("invalid_scope", "ask for at least one scope")
    if beyond := tuple(s for s in scopes if s not in configured):
        raise ScopeError(
            "scope_not_allowed",
            f"scope {' '.join(beyond)} is beyond the configured scopes "
            f"({' '.join(configured)}): a consent may narrow them, never widen",
            beyond,
        )
    return scopes


@dataclass(frozen=True, slots=True)
class Callback:
    """What the authorization server's redirect carried (RFC 6749 §4.1.2)."""

    state: str
    code: str | None
    error: str | None
    error_description: str | None


def parse_callback(url: str) -> Callback:
    """Read ``state`` and ``code`` or ``error`` from a redirect URL's query."""
    if len(url) > _MAX_CALLBACK:
        raise ConsentRequestError("the callback URL is implausibly long")
    try:
        pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True, max_num_fields=_MAX_PARAMS)
    except ValueError as exc:
        raise ConsentRequestError(f"the callback URL's query cannot be read: {exc}") from None
    seen: dict[str, str] = {}
    for name, value in pairs:
        if name in ("state", "code", "error", "error_description") and name in seen:
            raise ConsentRequestError(f"the callback URL carries {name} more than once")
        seen[name] = value
    state = seen.get("state")
    if not state:
        raise ConsentRequestError("the callback URL carries no state: it is not our redirect")
    code, error = seen.get("code") or None, seen.get("error") or None
    if (code is None) == (error is None):
        raise ConsentRequestError("the callback URL must carry either a code or an error")
    description = seen.get("error_description") or None
    if description is not None and error is None:
        description = None  # a stray description beside a code is no one's business
    try:
        return check_callback(state, code, error, description)
    except ConsentRequestError as exc:
        raise ConsentRequestError(f"the callback URL's {exc}") from None


def redirect_matches(url: str, redirect_uri: str) -> bool:
    """Whether ``url`` is a redirect to ``redirect_uri``: same scheme, host, port and
    path, and every query parameter the redirect URI has of its own."""
    try:
        got, want = urlsplit(url), urlsplit(redirect_uri)
        ports = (got.port or _default_port(got.scheme), want.port or _default_port(want.scheme))
    except ValueError:
        return False
    own = set(parse_qsl(want.query, keep_blank_values=True))
    return (
        got.scheme.lower() == want.scheme.lower()
        and (got.hostname or "") == (want.hostname or "")
        and ports[0] == ports[1]
        and (got.path or "/") == (want.path or "/")
        and own <= set(parse_qsl(got.query, keep_blank_values=True))
    )


def _default_port(scheme: str) -> int:
    return {"http": 80, "https": 443}.get(scheme.lower(), 0)
