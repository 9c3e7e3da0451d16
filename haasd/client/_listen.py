"""Catch a consent's one loopback redirect and have haasd finish it (RFC 8252 §7.3).

What ``haasd consent listen`` runs. It goes through the daemon, like every consent: the
daemon holds the store, the client secret and the token endpoint, and this needs only an
admin rule on its socket. It asks haasd for the configured redirect URI
(``GET /v1/consents``), listens on that loopback address (the configured port, or any
free one), starts the consent with the redirect URI on the bound port
(``POST /v1/consents``), waits for the browser's redirect, hands its URL to haasd
(``POST /v1/consents/callback``), shows the browser the outcome and closes the port.

The listening and the browser's pages are :mod:`haasd.client._loopback`'s (a small
HTTP/1.1 server): a callback haasd refuses as not this consent's (400) or cannot finish
for now (503: "reload this page") leaves the listener waiting; a grant, a refusal or a
failed exchange ends it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

from haasd.client._async import AsyncHaasdClient
from haasd.client._errors import ConsentDenied, DaemonUnreachable, HaasdClientError
from haasd.client._loopback import Page, listen_on_loopback
from haasd.client._model import FinishedConsent, StartedConsent
from haasd.errors import HaasdError
from haasd.timefmt import rfc3339

__all__ = ["listen_for_consent"]

Ready = Callable[[StartedConsent], Awaitable[object]]


async def listen_for_consent(
    client: AsyncHaasdClient,
    scopes: str | Iterable[str] | None = None,
    human_id: str | None = None,
    *,
    port: int | None = None,
    seconds: float | None = None,
    ready: Ready | None = None,
) -> FinishedConsent:
    """Start a consent whose redirect comes to a loopback port here; finish it via haasd.

    ``port`` None listens on the configured redirect URI's port (for a server that
    compares redirect URIs exactly); 0 takes a free port. ``ready(started)`` is awaited
    once the consent is started: show the human ``started.authorization_url``. The
    listener then waits ``seconds`` (default: until the consent expires) for the
    redirect, else raises ListenTimeoutError. Raises ConsentError when haasd's redirect
    URI is not a loopback one or the port cannot be had, and the client's errors
    (:class:`ConsentDenied`, ``exchange_failed``, ...) after showing them to the browser.
    """
    configured = (await client.consent_settings()).redirect_uri
    async with listen_on_loopback(configured, port) as listener:
        redirect_uri = listener.redirect_uri
        started = await client.start_consent(scopes, human_id, redirect_uri=redirect_uri)
        if ready is not None:
            await ready(started)
        wait = started.expires_at - time.time() if seconds is None else seconds
        return await listener.catch(
            lambda callback_url: client.finish_consent(callback_url=callback_url),
            _page_for,
            seconds=max(wait, 0.0),
            late=f"in time (the consent expires at {rfc3339(started.expires_at)})",
        )


def _page_for(exc: HaasdError) -> Page:
    """What the browser is shown when haasd did not finish the consent."""
    if isinstance(exc, DaemonUnreachable):
        return 503, "Try again", "haasd cannot be reached right now. Reload this page."
    if isinstance(exc, ConsentDenied):
        return 403, "Consent not given", f"{exc}. You can close this tab."
    status = exc.status if isinstance(exc, HaasdClientError) else None
    if status == 400:  # not this consent's redirect, or a used/expired state
        return 400, "Not this consent", f"{exc}. This window can be closed."
    if status == 503:  # the exchange failed for now; the consent was kept
        return 503, "Try again", "haasd could not reach the HaaS server. Reload this page."
    return 502, "Consent not completed", f"{exc}. You can close this tab."
