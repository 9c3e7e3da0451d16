"""``haasd consent start``, ``finish`` and ``listen``: onboarding through the running haasd."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

import anyio

from haasd.cli._common import EXIT_CONFIG, EXIT_OK, left, printable, say_error, words
from haasd.client import (
    AsyncHaasdClient,
    FinishedConsent,
    HaasdClient,
    HaasdClientError,
    StartedConsent,
)
from haasd.clock import SystemClock, rfc3339
from haasd.errors import HaasdError, ListenTimeoutError

__all__ = [
    "CONSENT_EPILOG",
    "CONSENT_EXITS",
    "LISTEN_EPILOG",
    "cmd_consent_finish",
    "cmd_consent_listen",
    "cmd_consent_start",
]

#: ``haasd consent``'s exit codes, by the daemon's error type (anything else: 1)
CONSENT_EXITS: dict[str, int] = {
    "invalid_state": 3,
    "consent_denied": 4,
    "unreachable": 5,
    "consent_limit": 6,
    "exchange_unavailable": 6,
    "forbidden": 7,
    "exchange_failed": 8,
    "listen_timeout": 9,
}

CONSENT_EPILOG = """\
Every consent goes through the running haasd (it holds the store, the client secret and
the token endpoint): this user needs an admin [[access]] rule on its socket.

  haasd consent start --scope status:read           # prints the URL, and its expiry
  haasd consent finish --callback-url 'https://app.example/callback?code=...&state=...'

exit codes:
  0  done: `start` printed the URL; `finish` and `listen` print the human and scopes
  1  any other error (a malformed request, '*' or a scope beyond the configured ones)
  2  usage: `finish` needs --callback-url URL, or --state S with --code C
  3  the state is unknown, expired or already used: start a new consent
  4  the human declined (or the server ended the consent)
  5  haasd cannot be reached
  6  try again later: the code never reached the HaaS server (finish the same URL
     again before the consent expires), or too many consents are pending
  7  forbidden: this user has no admin [[access]] rule
  8  the code is spent: the HaaS server refused it, or its answer was lost or cannot
     be used (no human named: start with --human ID); the message says whether the
     tokens it issued were revoked. Start a new consent
  9  `listen`: no redirect arrived in time"""

LISTEN_EPILOG = """\
For a loopback redirect_uri (such as http://127.0.0.1:8765/callback): asks haasd for its
redirect URI, listens on that address only (127.0.0.1 or ::1, never a public one), starts
the consent via haasd with the redirect on the listening port, prints the URL, hands the
one redirect to haasd to finish, closes the port, and prints the human and scopes
granted. It runs through haasd's socket, like `start` and `finish`: no store, key or
client secret is needed here. Exit codes as for `haasd consent`."""


def cmd_consent_start(args: argparse.Namespace, out: TextIO) -> int:
    with HaasdClient(args.socket) as client:
        try:
            started = client.start_consent(words(args.scope), args.human)
        except HaasdClientError as exc:
            return _consent_failed(exc)
    _print_started(started, out)
    return EXIT_OK


def cmd_consent_finish(args: argparse.Namespace, out: TextIO) -> int:
    if (args.state is None) != (args.code is None):
        print("haasd consent finish: --state S goes with --code C", file=sys.stderr)
        return EXIT_CONFIG  # a usage error, as argparse's own
    with HaasdClient(args.socket) as client:
        try:
            done = client.finish_consent(
                callback_url=args.callback_url, state=args.state, code=args.code
            )
        except HaasdClientError as exc:
            return _consent_failed(exc)
    _print_granted(done, out)
    return EXIT_OK


def cmd_consent_listen(args: argparse.Namespace, out: TextIO) -> int:
    from haasd.client import listen_for_consent  # brings the listener's HTTP server

    async def listen() -> FinishedConsent:
        async with AsyncHaasdClient(args.socket) as client:

            async def ready(started: StartedConsent) -> None:
                _print_started(started, out)
                print(
                    f"waiting for the redirect to {printable(started.redirect_uri)}",
                    file=out,
                    flush=True,
                )

            return await listen_for_consent(
                client,
                words(args.scope),
                args.human,
                port=args.port,
                seconds=args.timeout,
                ready=ready,
            )

    try:
        done = anyio.run(listen)
    except HaasdError as exc:
        return _consent_failed(exc)
    _print_granted(done, out)
    return EXIT_OK


def _consent_failed(exc: HaasdError) -> int:
    say_error(exc)
    if isinstance(exc, ListenTimeoutError):
        return CONSENT_EXITS["listen_timeout"]
    return CONSENT_EXITS.get(exc.error_type, 1) if isinstance(exc, HaasdClientError) else 1


def _print_started(started: StartedConsent, out: TextIO) -> None:
    if started.warning is not None:  # on stderr: `| head -1` still gets the URL alone
        say_error(f"warning: {started.warning}")
    print(printable(started.authorization_url), file=out)
    time_left = left(started.expires_at - SystemClock().time())
    print(f"expires at {rfc3339(started.expires_at)} (in {time_left})", file=out, flush=True)


def _print_granted(done: FinishedConsent, out: TextIO) -> None:
    """What a finished consent gave, every server-sent word escaped (:func:`printable`)."""
    limit = rfc3339(done.status.refresh_expires_at)
    human, scope = printable(done.human_id), printable(" ".join(done.scope))
    print(f"granted: {human} ({scope}); consent until {limit}", file=out)
    if done.replaced:
        print(f"  replaced the earlier grant of {human}", file=out)
    if done.different_human:
        expected = printable(done.expected_human_id)
        print(
            f"  note: the consent was for {expected}, but {human} "
            f"approved; the grant of {expected} is unchanged",
            file=out,
        )
