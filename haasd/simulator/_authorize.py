"""``GET /authorize`` and PKCE as plain checks: what is malformed, and where the browser goes.

:class:`~haasd.simulator._authority.Authority` decides who consents; these say whether a
request may be asked at all (RFC 6749 §4.1.1, RFC 7636) and build the redirect back
(RFC 6749 §4.1.2), without state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from haasd.simulator._messages import Headers, Reply
from haasd.simulator._tokenrequest import MAX_PARAMS, params_of

__all__ = ["Redirect", "malformed", "query_params", "redirect_ok", "scope_of", "verifier_problem"]

_PKCE_CHALLENGE: Final = re.compile(r"[A-Za-z0-9._~-]{43,128}")


def query_params(query: str) -> tuple[dict[str, str], set[str]]:
    """The query's parameters, and the names given more than once (a bad query: none)."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=MAX_PARAMS)
    except ValueError:
        pairs = []
    return params_of(pairs)


def redirect_ok(uri: str, registered: tuple[str, ...] | None) -> bool:
    """Whether the browser may be sent to ``uri``: one of ``registered``, or (none
    registered) any absolute http(s) URI without a fragment that fits a header."""
    if registered is not None:
        return uri in registered
    if not (uri.isascii() and uri.isprintable()) or " " in uri:
        return False  # it goes into a Location header
    parts = urlsplit(uri)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not parts.fragment


def scope_of(params: Mapping[str, str]) -> tuple[str, ...]:
    """The scope asked for, each name once, in the order given."""
    return tuple(dict.fromkeys(params.get("scope", "").split()))


def malformed(params: Mapping[str, str], repeated: set[str]) -> tuple[str, str] | None:
    """The error and description a malformed request is sent back with, or None."""
    if repeated:
        return "invalid_request", "parameters sent more than once"
    if params.get("response_type") != "code":
        return "unsupported_response_type", "only response_type=code is supported"
    challenge = params.get("code_challenge")
    method = params.get("code_challenge_method")
    if challenge is None and method is not None:
        return "invalid_request", "code_challenge_method without code_challenge"
    if challenge is not None:
        if method != "S256":
            return "invalid_request", "code_challenge_method must be S256"
        if not _PKCE_CHALLENGE.fullmatch(challenge):
            return "invalid_request", "malformed code_challenge"
    if not scope_of(params):
        return "invalid_scope", "scope is required"
    return None


def verifier_problem(challenge: str | None, verifier: str | None) -> str | None:
    """Why a code exchange's ``code_verifier`` does not answer the code's challenge, or
    None (RFC 7636 §4.6; RFC 9700 §2.1.1: no verifier for a code without a challenge)."""
    if challenge is None:
        return None if verifier is None else "code_verifier sent without code_challenge"
    if verifier is None:
        return "code_verifier is required"
    if not hmac.compare_digest(_s256(verifier), challenge):
        return "code_verifier does not match"
    return None


@dataclass(frozen=True, slots=True)
class Redirect:
    """The way back to the client: its redirect URI, the ``state`` to echo, the headers."""

    uri: str
    state: Mapping[str, str]
    headers: Headers

    def to(self, params: Mapping[str, str], *, human_id: str | None = None) -> Reply:
        """A 302 to the redirect URI with ``params`` (and ``state``) added to its query."""
        location = _with_query(self.uri, {**params, **self.state})
        return Reply(302, (("Location", location), *self.headers), human_id=human_id)

    def error(self, error: str, description: str) -> Reply:
        """A 302 carrying an error (RFC 6749 §4.1.2.1)."""
        return self.to({"error": error, "error_description": description})


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _with_query(uri: str, params: Mapping[str, str]) -> str:
    """``uri`` with ``params`` added to its query, keeping what it had (RFC 6749 §4.1.2)."""
    parts = urlsplit(uri)
    query = "&".join(part for part in (parts.query, urlencode(params)) if part)
    return urlunsplit(parts._replace(query=query))
