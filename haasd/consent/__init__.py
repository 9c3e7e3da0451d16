"""Getting a human's consent into haasd, and getting it again before the 30-day limit.

The authorization-code flow with PKCE (RFC 7636, S256), as the HaaS docs describe it::

    flow = ConsentFlow(store, auth, refresher, clock, events, config.haas)
    await tg.start(flow.run)                      # expires abandoned consents
    pending = await flow.start(["status:read"])   # or start(human_id="usr_…") to re-consent
    # send the human to pending.authorization_url; the browser comes back to redirect_uri
    result = await flow.finish_url(callback_url)  # or finish(state, code=…/error=…)

Decisions a caller must know:

* **Pending consents live in the store** (``pending_consents``), so a restart between
  start and callback loses nothing. The ``state`` is kept only as its SHA-256; the PKCE
  verifier is sealed (AES-GCM, the store's key) with that digest as associated data.
* **Single use.** :meth:`ConsentFlow.finish` takes the pending consent out of the store in
  one statement (``DELETE … RETURNING``) before anything else, so of two concurrent
  callbacks exactly one exchanges the code; the other gets InvalidStateError, as do
  unknown and expired states — without any request to the server.
* **What consumes a consent:** a grant; a callback with an error (ConsentDeniedError;
  ``consent.denied``); the server refusing the code (ExchangeFailedError with the
  server's ``error_type``; ``consent.failed``); a failure *after the code was sent* — a
  timeout or a lost answer, a 2xx haasd cannot use (ExchangeFailedError with
  ``exchanged``: the code is spent, a retry could only get ``invalid_grant``); expiry
  (``consent.abandoned``). A failure *before the server saw the code* (no connection,
  429, 503) or a cancellation puts it back: ExchangeUnavailableError, and the same
  callback may be finished again until it expires.
* **The human of a grant** is the answer's ``human_id`` when it names one (it must be
  the consent's human, if the consent named one), else the consent's own — sent to the
  server as ``login_hint``. A consent without a human against a server whose answers name
  none is refused at finish, nothing stored; after such an answer :meth:`ConsentFlow.start`
  without a human carries a ``warning``. A missing ``scope`` is the requested one.
* **Never orphan a token:** when the server issued tokens haasd cannot keep (an unusable
  answer, a human outside the finisher's rules, a failed store write) they are revoked
  (RFC 7009) if ``haas.revocation_url`` is configured; errors and ``consent.failed``
  say whether (``revoked``). No token is ever logged.
  So every ``consent.started`` ends in exactly one of ``consent.granted``, ``.denied``,
  ``.failed`` or ``.abandoned``; events carry a ``consent_id`` (a prefix of the state's
  digest) to match them, never the state or the code.
* **Scopes** default to the configured ones — for a named human with a grant, to that
  grant's (within the configured ones). A request may narrow, never widen; ``*`` and
  unknown scopes are refused (ScopeError).
* **Re-consent** works for a grant in any state (an early re-consent is allowed); the
  URL carries ``login_hint``. The new grant replaces the old in one ``INSERT OR REPLACE``
  (:meth:`~haasd.refresher.Refresher.add`): state active, the refresh-token limit counted
  from the new consent. If the server says another human approved, nothing is stored and
  the tokens are revoked: the named human's grant is untouched.
* **The refresh policy** of a new grant is the engine's at that moment
  (``refresher.policy``, a :class:`GrantKeeper`): the flow keeps no copy, so a reload
  that replaces the policy reaches consents too.
* **Who finishes** may be limited to some humans: ``finish(..., may_hold=...)``. A
  consent naming a human outside them is refused unused; one approved by a human outside
  them is refused after the exchange with nothing stored and its tokens revoked
  (ConsentForbiddenError; the event is ``consent.failed`` with ``error``
  ``human_not_allowed``).
* **Callback fields** are checked before anything is looked up: printable, bounded,
  ASCII where RFC 6749 says so (ConsentRequestError names the field).
* **Bounded:** at most ``max_pending`` (1000) consents wait at once. When full, expired
  ones are pruned first; if none has expired, ConsentLimitError (``retry_after`` until
  the first expires). Live consents are never evicted.
* **Callback fields** for other front ends (the socket API): :data:`CALLBACK_FIELDS` and
  :func:`text_field` check them as :meth:`ConsentFlow.finish` does.
* ``haasd consent listen`` catches the loopback redirect with
  :func:`haasd.client.listen_for_consent`, which has the daemon finish it.
"""

from haasd.consent._flow import (
    DEFAULT_MAX_PENDING,
    DEFAULT_PENDING_TTL,
    ConsentFlow,
    ConsentResult,
    GrantKeeper,
    MayHold,
    PendingConsent,
)
from haasd.consent._oauth import CALLBACK_FIELDS, text_field

__all__ = [
    "CALLBACK_FIELDS",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_PENDING_TTL",
    "ConsentFlow",
    "ConsentResult",
    "GrantKeeper",
    "MayHold",
    "PendingConsent",
    "text_field",
]
