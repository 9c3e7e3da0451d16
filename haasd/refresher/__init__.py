"""The refresh engine: every grant fresh, inside the rate limit, never a lost refresh token.

It holds every grant in memory (tokens decrypted once at start) and keeps them current:

* **One heap** of wall-clock deadlines, one entry per grant (stale entries skipped by
  version), drives everything: refreshes ahead of expiry and the clock passing the
  re-consent warning or the 30-day limit. Between deadlines the engine sleeps.
* **Due refreshes** go to a ready queue ordered by access expiry — earliest first when
  demand exceeds the budget — drained by a few workers.
* **Single flight**: at most one refresh per grant is in flight, whoever asked for it
  (the schedule, :meth:`Refresher.ensure_fresh`, an admin); the rest wait for it. The
  flight runs in the engine's own task group, so a caller that goes away cannot cut it.
* **Write before serve**: an intent (fingerprint of the refresh token being spent) is
  written before the request; the answer's tokens are written, synced and shielded from
  cancellation before memory — and so any reader — sees them.

Policy (when, what an answer means) is :mod:`haasd.grants`; this package does the I/O.

The modules: ``_stats`` (:class:`RefresherStats`, the latency histogram), ``_core``
(the engine's state; placing a grant's one deadline, moving its state as the clock says,
the backlog and the grants at risk), ``_flight`` (one refresh: the intent, the request,
the outcome written only while the intent is still the grant's) and ``_engine``
(:class:`Refresher`: what the server reads, loading at start, the schedule loop and the
workers).
"""

from haasd.refresher._core import RISK_CHECK_EVERY, STARTUP_SPREAD, Checkpoint
from haasd.refresher._engine import MAX_SLEEP, SERVED_FLUSH_EVERY, Refresher
from haasd.refresher._flight import LOST_ANSWER_DELAY, LOST_ANSWER_RETRIES
from haasd.refresher._stats import LATENCY_BUCKETS, RefresherStats

__all__ = [
    "LATENCY_BUCKETS",
    "LOST_ANSWER_DELAY",
    "LOST_ANSWER_RETRIES",
    "MAX_SLEEP",
    "RISK_CHECK_EVERY",
    "SERVED_FLUSH_EVERY",
    "STARTUP_SPREAD",
    "Checkpoint",
    "Refresher",
    "RefresherStats",
]
