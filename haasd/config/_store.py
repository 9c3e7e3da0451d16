"""``[store]``'s PostgreSQL address: the ``store.url`` value, and its inline password.

A password never stays in the URL the rest of haasd sees: :func:`split_password` takes it
out (from the user part or a ``password=`` query parameter) so that it travels as a
:class:`~haasd.config.SecretSource`, which no repr or log line shows. No error here
quotes the URL, which may hold one.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

SCHEME: Final = "postgresql"
URL_EXAMPLE: Final = "postgresql://haasd@db.example.com:5432/haasd"


def parse_store_url(value: Any) -> str:
    """A ``postgresql://`` URL (libpq's form), checked but not changed. ValueError if not."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    text = value.strip()
    scheme, sep, _ = text.partition("://")
    if not sep or scheme.lower() != SCHEME:
        raise ValueError(
            f'expected a {SCHEME}:// URL, e.g. "{URL_EXAMPLE}" '
            "(for a SQLite file, set store.path instead)"
        )
    parts = urlsplit(text)
    if "," not in parts.netloc and not _port_ok(parts.netloc):  # host1:port1,host2:... as is
        raise ValueError("the URL's port is not a number from 1 to 65535")
    if parts.fragment:
        raise ValueError("a PostgreSQL URL has no #fragment")
    return text


def _port_ok(netloc: str) -> bool:
    try:
        port = urlsplit(f"//{netloc}").port
    except ValueError:
        return False
    return port != 0


def split_password(url: str) -> tuple[str, str | None]:
    """``url`` without its password, and the password (None if it has none)."""
    parts = urlsplit(url)
    netloc, password = parts.netloc, None
    if parts.password:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc, password = f"{user}@{hostport}", unquote(parts.password)
    params = parse_qsl(parts.query, keep_blank_values=True)
    in_query = [value for name, value in params if name == "password"]
    new_query = parts.query
    if in_query:
        new_query = urlencode([(n, v) for n, v in params if n != "password"], safe="/")
        password = password or in_query[-1] or None
    if password is None:
        return url, None
    # by hand: urlunsplit would turn postgresql:///db (no host) into postgresql:/db
    query = f"?{new_query}" if new_query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}", password
