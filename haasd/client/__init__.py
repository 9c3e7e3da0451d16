"""Clients for haasd's Unix socket, for the apps that use its tokens.

* :class:`HaasdClient` (blocking, thread-safe) and :class:`AsyncHaasdClient` (anyio):
  typed answers, errors as exceptions, tokens cached until shortly before they expire
  so that asking for one costs no request in the common case;
* :class:`HaasdAuth` — an ``httpx.Auth`` putting a Bearer token on each HaaS request
  and retrying once, with a newer token, after a 401.

::

    with HaasdClient() as haasd, httpx.Client(auth=HaasdAuth(MARIA, client=haasd)) as api:
        api.post(f"{HAAS}/v1/tasks", json=task)

Errors (see :mod:`haasd.client._errors` for the tree): :class:`UnknownHuman`,
:class:`Forbidden`, :class:`NeedsReconsent`, :class:`TokenUnavailable`,
:class:`DaemonUnreachable`, all :class:`HaasdClientError`, itself a
:class:`~haasd.errors.HaasdError`.
"""

from __future__ import annotations

from haasd.client._async import AsyncHaasdClient
from haasd.client._auth import HaasdAuth
from haasd.client._errors import (
    DaemonUnreachable,
    Forbidden,
    HaasdClientError,
    NeedsReconsent,
    TokenUnavailable,
    UnknownHuman,
)
from haasd.client._model import Health, HumanStatus, Token
from haasd.client._sync import HaasdClient
from haasd.client._wire import DEFAULT_SOCKET, default_socket

__all__ = [
    "DEFAULT_SOCKET",
    "AsyncHaasdClient",
    "DaemonUnreachable",
    "Forbidden",
    "HaasdAuth",
    "HaasdClient",
    "HaasdClientError",
    "Health",
    "HumanStatus",
    "NeedsReconsent",
    "Token",
    "TokenUnavailable",
    "UnknownHuman",
    "default_socket",
]
