"""What the sync and the async client share: the routes they ask, and how an answer
becomes a value or an exception. No I/O here."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar
from urllib.parse import quote

import httpx

from haasd.client._errors import HaasdClientError, error_from_response
from haasd.client._model import EventParser, HumanStatus

__all__ = [
    "BASE_URL",
    "DEFAULT_SOCKET",
    "EVENTS",
    "HEALTH",
    "HUMANS",
    "default_socket",
    "event_of",
    "human_path",
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
