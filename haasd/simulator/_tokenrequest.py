"""Reading a ``/token`` request: JSON (the HaaS docs' form) or urlencoded, Basic or body auth."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, unquote_plus

from haasd.simulator._messages import Headers, Reply, oauth_error

__all__ = [
    "MAX_PARAMS",
    "WWW_AUTHENTICATE",
    "TokenRequest",
    "invalid_request",
    "params_of",
    "parse_token_request",
]

MAX_PARAMS: Final = 50
WWW_AUTHENTICATE: Final[Headers] = (("WWW-Authenticate", 'Basic realm="haas"'),)


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A ``/token`` request's parameters, or why they could not be read."""

    params: Mapping[str, str] = field(default_factory=dict)
    basic: tuple[str, str] | None = None
    """``(client_id, client_secret)`` from HTTP Basic, if sent."""
    error: Reply | None = None

    @property
    def claimed_client_id(self) -> str:
        """Who the request says it is (the rate limit's key), before authentication."""
        if self.basic is not None:
            return self.basic[0]
        return self.params.get("client_id", "")


def invalid_request(description: str) -> Reply:
    return oauth_error(400, "invalid_request", description)


def _parse_basic(value: str) -> tuple[str, str] | None:
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        return None
    # RFC 6749 §2.3.1: both parts are form-urlencoded before being joined
    return unquote_plus(client_id), unquote_plus(secret)


def params_of(pairs: list[tuple[str, str]]) -> tuple[dict[str, str], set[str]]:
    """Parameters without empty values (RFC 6749 §3.1) and the names sent twice."""
    params: dict[str, str] = {}
    repeated: set[str] = set()
    for name, value in pairs:
        if not value:
            continue
        if name in params:
            repeated.add(name)
        params[name] = value
    return params, repeated


def parse_token_request(headers: Mapping[str, str], body: bytes) -> TokenRequest:
    """Read a ``/token`` request: a JSON object (the HaaS docs' form) or a urlencoded form."""
    basic: tuple[str, str] | None = None
    if "authorization" in headers:
        basic = _parse_basic(headers["authorization"])
        if basic is None:
            error = oauth_error(401, "invalid_client", "unreadable Authorization header")
            return TokenRequest(error=error.with_headers(WWW_AUTHENTICATE))
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type in ("", "application/json"):
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return TokenRequest(basic=basic, error=invalid_request("malformed JSON body"))
        if not isinstance(document, dict):
            return TokenRequest(basic=basic, error=invalid_request("body must be a JSON object"))
        if not all(isinstance(value, str) for value in document.values()):
            return TokenRequest(basic=basic, error=invalid_request("parameters must be strings"))
        params, repeated = params_of(list(document.items()))
    elif media_type == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(
                body.decode(),
                keep_blank_values=True,
                strict_parsing=True,
                max_num_fields=MAX_PARAMS,
            )
        except (UnicodeDecodeError, ValueError):
            return TokenRequest(basic=basic, error=invalid_request("malformed form body"))
        params, repeated = params_of(pairs)
    else:
        error = invalid_request(f"unsupported Content-Type {media_type!r}")
        return TokenRequest(basic=basic, error=error)
    if repeated:
        error = invalid_request(f"parameters sent more than once: {', '.join(sorted(repeated))}")
        return TokenRequest(params=params, basic=basic, error=error)
    return TokenRequest(params=params, basic=basic)
