"""HTTP messages as plain values: what the wire layer hands in and what it sends back.

Nothing here does I/O, so the authorization server's decisions (``_authority``) and the
fault injection (``_faults``) are plain functions of these values.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TypeAlias

__all__ = ["Headers", "Reply", "Request", "html_reply", "json_reply", "oauth_error"]

#: Response headers in order, names as they will be sent.
Headers: TypeAlias = tuple[tuple[str, str], ...]

_NO_STORE: Headers = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, read in full. Header names are lower-case."""

    method: str
    target: str
    headers: Mapping[str, str]
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP response. ``human_id`` is bookkeeping for the counters; never sent."""

    status: int
    headers: Headers = ()
    body: bytes = b""
    human_id: str | None = None

    def with_headers(self, extra: Headers) -> Reply:
        """This reply with ``extra`` headers appended."""
        return replace(self, headers=self.headers + extra)

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (any case), if any."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


def json_reply(
    status: int, payload: object, headers: Headers = (), *, human_id: str | None = None
) -> Reply:
    """A JSON response that no cache may keep (RFC 6749 §5.1)."""
    body = json.dumps(payload).encode()
    return Reply(
        status, (("Content-Type", "application/json"), *_NO_STORE, *headers), body, human_id
    )


def oauth_error(status: int, error: str, description: str, headers: Headers = ()) -> Reply:
    """An RFC 6749 §5.2 error: ``{"error": ..., "error_description": ...}``."""
    return json_reply(status, {"error": error, "error_description": description}, headers)


def html_reply(status: int, title: str, message: str, headers: Headers = ()) -> Reply:
    """A small HTML page, as a browser would be shown."""
    page = (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>\n"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>\n"
    )
    return Reply(status, (("Content-Type", "text/html; charset=utf-8"), *headers), page.encode())
