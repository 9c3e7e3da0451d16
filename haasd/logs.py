"""Logging: structlog to stderr, JSON lines for services, console for people.

:class:`Redact` runs last before rendering, so nothing shaped like a HaaS token or key —
wherever it hides, in the message, a field, a nested structure or a traceback — reaches
the output. :class:`~haasd.secret.Secret` values already render masked; this is the net
under that. In the console format, :class:`Printable` then shows control characters
(an ANSI escape in a server's error text) escaped, as JSON lines always do.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, Final, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from haasd.text import printable

__all__ = ["REDACTED", "Printable", "Redact", "configure_logging", "redact_text"]

REDACTED: Final = "[redacted]"

#: HaaS access/refresh tokens and API keys: prefix kept, the secret part dropped.
_TOKEN_RE: Final = re.compile(r"\b(haas_(?:at|rt|live|test)_)[A-Za-z0-9._~+/=-]+")
#: "Bearer <anything>" in header dumps and error texts.
_BEARER_RE: Final = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
#: field names whose values are secrets whatever they look like
_SECRET_FIELD_RE: Final = re.compile(
    r"(?i)(^|_)(token|secret|password|passwd|authorization|api_key|apikey|store_key|"
    r"auth_code|authorization_code|code_verifier|verifier|credential)s?$"
)
#: field names that match the pattern above but never hold a secret
_SAFE_FIELDS: Final = frozenset(
    {"token_type", "key_id", "fingerprint", "token_fingerprint", "error_code", "status_code"}
)


def redact_text(text: str) -> str:
    """``text`` with every token- or key-shaped run replaced."""
    if "haas_" in text:
        text = _TOKEN_RE.sub(lambda m: m.group(1) + REDACTED, text)
    if "earer" in text:
        text = _BEARER_RE.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: _redact_field(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return redact_text(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact_text(str(value))


def _redact_field(name: str, value: Any) -> Any:
    if value is not None and name not in _SAFE_FIELDS and _SECRET_FIELD_RE.search(name):
        return REDACTED
    return _redact_value(value)


class Redact:
    """structlog processor: scrub secrets from every key and value of the event."""

    __slots__ = ()

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return {k: _redact_field(k, v) for k, v in event_dict.items()}


class Printable:
    """structlog processor for the console: no control or invisible character reaches
    the terminal raw, so that text a server sent can neither drive the terminal nor
    stop logging with an encoding error. The message and a traceback (which keeps its
    line breaks) are escaped in place; another string field that needs it is shown as
    ``repr`` shows it, quoted and escaped, as the renderer already shows one with a
    space in it."""

    __slots__ = ()

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return {k: _shown(k, v) for k, v in event_dict.items()}


class _Quoted:
    """A string the console renderer shows by its ``repr``."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return repr(self.text)


def _shown(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value  # rendered by repr, which escapes what is not printable
    if key in {"event", "exception"}:
        return printable(value, keep="\n" if key == "exception" else "")
    return value if printable(value) == value else _Quoted(value)


def configure_logging(
    level: str = "info", fmt: str = "json", *, stream: TextIO | None = None
) -> None:
    """Configure structlog once, at the entry point. ``fmt`` is "json" or "console"."""
    out = stream if stream is not None else sys.stderr
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        Redact(),
    ]
    if fmt == "console":
        processors.append(Printable())
        processors.append(structlog.dev.ConsoleRenderer(colors=out.isatty()))
    else:
        processors.append(structlog.processors.JSONRenderer())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
