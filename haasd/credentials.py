"""How the client proves who it is to the token endpoint (RFC 6749 §2.3.1). Pure.

``client_secret_post`` puts ``client_id`` and ``client_secret`` in the request body (the
HaaS docs); ``client_secret_basic`` sends them in an ``Authorization: Basic`` header, each
form-urlencoded first, and none in the body.
"""

from __future__ import annotations

from base64 import b64encode
from collections.abc import Iterable
from urllib.parse import quote_plus

from haasd.config import AuthMethod

__all__ = ["basic_authorization", "hidden", "with_credentials"]


def basic_authorization(client_id: str, client_secret: str) -> str:
    """The ``Authorization`` header value of ``client_secret_basic`` (RFC 6749 §2.3.1):
    id and secret each form-urlencoded (UTF-8, space as ``+``), joined by ``:``, base64."""
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
    return "Basic " + b64encode(pair.encode("ascii")).decode("ascii")


def with_credentials(
    fields: dict[str, str], method: AuthMethod, client_id: str, client_secret: str
) -> tuple[dict[str, str], dict[str, str]]:
    """(body, headers) of a request carrying ``fields`` and the client's credentials, by
    ``method``: in the body, or only in a Basic header."""
    if method == "client_secret_basic":
        return fields, {"Authorization": basic_authorization(client_id, client_secret)}
    return {**fields, "client_id": client_id, "client_secret": client_secret}, {}


def hidden(secrets: Iterable[str | None], client_id: str, client_secret: str) -> tuple[str, ...]:
    """What must never reach a message: ``secrets`` and the client secret, also as encoded
    in a form body or a Basic header (a server may echo either)."""
    encoded = (
        quote_plus(client_secret, safe=""),
        basic_authorization(client_id, client_secret).removeprefix("Basic "),
    )
    return tuple(s for s in (*secrets, client_secret, *encoded) if s)
