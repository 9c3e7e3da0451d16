"""Loopback redirect URIs (RFC 8252 §7.3): which hosts are loopback, and the port of a
redirect URI on one. Pure string functions, shared by the configuration, the consent flow
and ``haasd consent listen``.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit

from haasd.errors import ConsentRequestError

__all__ = ["is_loopback", "loopback_port", "with_port"]


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: where plain http is acceptable."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_port(redirect_uri: str) -> int:
    """The port of a loopback ``http`` redirect URI (RFC 8252 §7.3), or ConsentRequestError."""
    parts = urlsplit(redirect_uri)
    host = parts.hostname or ""
    if parts.scheme != "http" or not is_loopback(host):
        raise ConsentRequestError(
            f"the redirect URI {redirect_uri} is not a loopback http URI (such as "
            "http://127.0.0.1:8765/callback): only a loopback redirect can be listened for"
        )
    return parts.port or 80


def with_port(redirect_uri: str, port: int) -> str:
    """``redirect_uri`` (a loopback one) with its port replaced."""
    parts = urlsplit(redirect_uri)
    host = parts.hostname or ""
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))
