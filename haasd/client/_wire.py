"""What the sync and the async client share: the routes they ask, and how an answer
becomes a value or an exception. No I/O here."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar
from urllib.parse import quote

import httpx

from haasd.client._errors import HaasdClientError, error_from_response
from haasd.client._model import EventParser, HumanStatus

__all__ = [
    "BASE_URL",
    "CONSENTS",
    "CONSENT_CALLBACK",
    "CONSENT_TIMEOUT",
    "DEFAULT_SOCKET",
    "EVENTS",
    "HEALTH",
    "HUMANS",
    "callback_body",
    "consent_timeout",
    "default_socket",
    "event_of",
    "human_path",
    "start_body",
    "status_list",
    "token_query",
    "value_of",
]

_FALLBACK_SOCKET: Final = "/run/haasd/haasd.sock"


def default_socket() -> str:
    """``$HAASD_SOCKET`` if set, else haasd's default socket path."""
    return os.environ.get("HAASD_SOCKET") or _FALLBACK_SOCKET


#: the socket clients use unless told otherwise (``$HAASD_SOCKET`` when imported)
DEFAULT_SOCKET: Final = default_socket()
BASE_URL: Final = "http://haasd"
HEALTH: Final = "/v1/health"
HUMANS: Final = "/v1/humans"
EVENTS: Final = "/v1/events"
CONSENTS: Final = "/v1/consents"
CONSENT_CALLBACK: Final = "/v1/consents/callback"
#: finishing a consent waits for haasd's code exchange (bounded there by 30 s by default)
CONSENT_TIMEOUT: Final = 40.0

T = TypeVar("T")


def human_path(prefix: str, human_id: str, suffix: str = "") -> str:
    """A route naming a human; the id is quoted whole, so it stays one path segment."""
    if not human_id:
        raise ValueError("human_id must not be empty")
    return f"{prefix}/{quote(human_id, safe='')}{suffix}"


def token_query(min_ttl: int, scope: tuple[str, ...]) -> dict[str, str]:
    query: dict[str, str] = {}
    if min_ttl:
        query["min_ttl"] = str(min_ttl)
    if scope:
        query["scope"] = " ".join(scope)
    return query


def consent_timeout(timeout: float) -> float:
    """The timeout of a consent request: the client's, but long enough for an exchange."""
    return max(timeout, CONSENT_TIMEOUT)


def start_body(
    scopes: str | Iterable[str] | None, human_id: str | None, redirect_uri: str | None
) -> dict[str, Any]:
    """``POST /v1/consents``'s body."""
    body: dict[str, Any] = {}
    if scopes is not None:
        body["scopes"] = scopes.split() if isinstance(scopes, str) else list(scopes)
    if human_id is not None:
        body["human_id"] = human_id
    if redirect_uri is not None:
        body["redirect_uri"] = redirect_uri
    return body


def callback_body(
    callback_url: str | None,
    state: str | None,
    code: str | None,
    error: str | None,
    error_description: str | None,
) -> dict[str, str]:
    """``POST /v1/consents/callback``'s body; ValueError for a combination haasd refuses."""
    if callback_url is not None:
        if state is not None or code is not None or error is not None:
            raise ValueError("give callback_url, or state with code or error, not both")
        return {"callback_url": callback_url}
    if state is None or (code is None) == (error is None):
        raise ValueError("give callback_url, or state with either code or error")
    if error is None:
        return {"state": state, "code": str(code)}
    body = {"state": state, "error": error}
    if error_description is not None:
        body["error_description"] = error_description
    return body


def value_of(response: httpx.Response, build: Callable[[Mapping[str, Any]], T]) -> T:
    """``build`` applied to a read answer's JSON object; error answers raise theirs."""
    if response.is_error:
        raise error_from_response(response)
    try:
        document = response.json()
        if not isinstance(document, dict):
            raise TypeError("not a JSON object")
        return build(document)
    except (ValueError, KeyError, TypeError) as exc:
        raise _malformed(response.request.url.path, exc) from None


def status_list(document: Mapping[str, Any]) -> list[HumanStatus]:
    """``GET /v1/humans``'s answer."""
    return [HumanStatus.from_json(row) for row in document["humans"]]


def event_of(parser: EventParser, line: str, path: str) -> dict[str, Any] | None:
    try:
        return parser.feed(line)
    except ValueError as exc:
        raise _malformed(path, exc) from None


def _malformed(path: str, exc: Exception) -> HaasdClientError:
    reason = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
    return HaasdClientError(
        f"haasd's answer to {path} is not what its API documents: {reason}",
        error_type="malformed_response",
    )
