"""What the consent routes take: a JSON object, checked field by field before anything runs.

A body is UTF-8 JSON, an object without repeated or unknown fields; every string field is
non-empty, bounded and printable (ASCII where RFC 6749 says so). Anything else is a 400
``invalid_request`` naming the field (:func:`~haasd.server.answers.invalid`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Final

from haasd.consent import CALLBACK_FIELDS, text_field
from haasd.errors import ConsentRequestError
from haasd.server.answers import invalid

__all__ = [
    "CALLBACK_BODY_FIELDS",
    "START_FIELDS",
    "parse_object",
    "scopes_of",
    "text_field_of",
]

#: the fields of ``POST /v1/consents`` and of ``POST /v1/consents/callback``
START_FIELDS: Final = frozenset({"scopes", "human_id", "redirect_uri"})
CALLBACK_BODY_FIELDS: Final = frozenset(
    {"callback_url", "state", "code", "error", "error_description"}
)
#: per string field of a body: the longest value taken, and whether it must be ASCII
_FIELDS: Final = {
    **CALLBACK_FIELDS,
    "callback_url": (8192, False),  # as a browser shows it; its parts are checked again
    "human_id": (128, True),
    "redirect_uri": (2048, True),
}
#: scope names in one request, and the length of one (or of a space-separated string)
_MAX_SCOPES: Final = 32
_MAX_SCOPE: Final = 64


class _Repeated(ValueError):
    """A JSON object names one field twice (which one counts is a guess: refused)."""


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        counts = Counter(name for name, _ in pairs)
        raise _Repeated(next(name for name, count in counts.items() if count > 1))
    return document


def _shown(name: str) -> str:
    """A field name as an answer may quote it: printable ASCII as it is, else escaped."""
    short = name[:64]
    return short if short.isascii() and short.isprintable() else ascii(short)


def parse_object(body: bytes, fields: frozenset[str]) -> dict[str, Any]:
    """The body's JSON object (``{}`` when empty), without null fields; 400 otherwise."""
    if not body.strip():
        return {}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid("the body is not UTF-8 JSON (RFC 8259 §8.1)") from None
    try:
        document = json.loads(text, object_pairs_hook=_no_repeats)
    except _Repeated as exc:
        raise invalid(f"field {_shown(str(exc))} is given more than once") from None
    except RecursionError:
        raise invalid("the body is not JSON: nested too deeply") from None
    except ValueError:
        raise invalid("the body is not JSON") from None
    if not isinstance(document, dict):
        raise invalid("the body must be a JSON object")
    if unknown := sorted(set(document) - fields):
        known = ", ".join(sorted(fields))
        shown = ", ".join(_shown(name) for name in unknown[:8])
        raise invalid(f"unknown field {shown}; known fields: {known}")
    return {name: value for name, value in document.items() if value is not None}


def _field(name: str, value: object, limit: int, *, ascii: bool) -> str:
    try:
        return text_field(name, value, limit, ascii=ascii)
    except ConsentRequestError as exc:
        raise invalid(str(exc)) from None


def text_field_of(document: Mapping[str, Any], name: str) -> str | None:
    """The string field ``name`` (:data:`_FIELDS`), or None; 400 naming it if malformed."""
    value = document.get(name)
    if value is None:
        return None
    limit, ascii = _FIELDS[name]
    return _field(name, value, limit, ascii=ascii)


def scopes_of(document: Mapping[str, Any]) -> Sequence[str] | None:
    value = document.get("scopes")
    if value is None:
        return None
    if isinstance(value, str):
        return _field("scopes", value, _MAX_SCOPES * _MAX_SCOPE, ascii=True).split()
    if (
        isinstance(value, list)
        and len(value) <= _MAX_SCOPES
        and all(isinstance(s, str) for s in value)
    ):
        names = [_field(f"scopes[{i}]", s, _MAX_SCOPE, ascii=True) for i, s in enumerate(value)]
        return [word for name in names for word in name.split()]
    raise invalid(
        f"scopes must be a list of at most {_MAX_SCOPES} scope names (or one space-separated "
        "string)"
    )
