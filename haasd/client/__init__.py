"""Clients for haasd's Unix socket, for the apps that use its tokens.

* :class:`HaasdClient` (blocking, thread-safe) and :class:`AsyncHaasdClient` (anyio):
  typed answers, errors as exceptions, tokens cached until shortly before they expire
  so that asking for one costs no request in the common case;
* :class:`HaasdAuth` — an ``httpx.Auth`` putting a Bearer token on each request to the
  HaaS API's origin (and on no other) and retrying once, with a newer token, after a 401.

::

    with HaasdClient() as haasd, httpx.Client(auth=HaasdAuth(MARIA, client=haasd)) as api:
        api.post(f"{HAAS}/v1/tasks", json=task)

Errors (see :mod:`haasd.client._errors` for the tree): :class:`UnknownHuman`,
:class:`Forbidden`, :class:`NeedsReconsent`, :class:`TokenUnavailable`,
:class:`DaemonUnreachable`, all :class:`HaasdClientError`, itself a
:class:`~haasd.errors.HaasdError`.

Admins onboard humans with :meth:`HaasdClient.start_consent` and
:meth:`HaasdClient.finish_consent` (:class:`ConsentDenied`, :class:`InvalidConsentState`),
or :func:`listen_for_consent` for a loopback redirect URI (imported on first use: it
brings the consent listener's HTTP server along).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from haasd.client._async import AsyncHaasdClient
from haasd.client._auth import HaasdAuth
from haasd.client._errors import (
    ConsentDenied,
    DaemonUnreachable,
    Forbidden,
    HaasdClientError,
    InvalidConsentState,
    NeedsReconsent,
    TokenUnavailable,
    UnknownHuman,
)
from haasd.client._model import (
    Cluster,
    ClusterInstance,
    ConsentSettings,
    FinishedConsent,
    Health,
    HumanStatus,
    StartedConsent,
    Token,
)
from haasd.client._sync import HaasdClient
from haasd.client._wire import DEFAULT_SOCKET, default_socket

if TYPE_CHECKING:
    from haasd.client._listen import listen_for_consent

__all__ = [
    "DEFAULT_SOCKET",
    "AsyncHaasdClient",
    "Cluster",
    "ClusterInstance",
    "ConsentDenied",
    "ConsentSettings",
    "DaemonUnreachable",
    "FinishedConsent",
    "Forbidden",
    "HaasdAuth",
    "HaasdClient",
    "HaasdClientError",
    "Health",
    "HumanStatus",
    "InvalidConsentState",
    "NeedsReconsent",
    "StartedConsent",
    "Token",
    "TokenUnavailable",
    "UnknownHuman",
    "default_socket",
    "listen_for_consent",
]


def __getattr__(name: str) -> Any:
    """``listen_for_consent``, imported on first use (apps asking for tokens never do)."""
    if name == "listen_for_consent":
        from haasd.client._listen import listen_for_consent

        return listen_for_consent
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
