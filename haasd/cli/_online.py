"""The commands that ask the running haasd over its socket: ``token``, ``health``, ``status``."""

from __future__ import annotations

import argparse
import json
from typing import TextIO

from haasd.cli._common import EXIT_FAILURE, EXIT_OK, printable, say_error, table, words
from haasd.client import (
    DaemonUnreachable,
    Forbidden,
    HaasdClient,
    HaasdClientError,
    NeedsReconsent,
    TokenUnavailable,
    UnknownHuman,
)
from haasd.clock import SystemClock

__all__ = ["EXIT_CODES_EPILOG", "TOKEN_EXITS", "cmd_health", "cmd_token", "status_online"]

#: ``haasd token``'s exit codes, by what went wrong (anything else: 1)
TOKEN_EXITS: tuple[tuple[type[HaasdClientError], int], ...] = (
    (UnknownHuman, 3),
    (NeedsReconsent, 4),
    (DaemonUnreachable, 5),
    (TokenUnavailable, 6),
    (Forbidden, 7),
)

#: ``haasd token --help``'s epilog
EXIT_CODES_EPILOG = """\
for scripts:
  curl -H "Authorization: Bearer $(haasd token usr_maria_42)" ...

exit codes:
  0  the token is printed on standard output
  1  any other error (e.g. a malformed human id)
  3  unknown human: haasd holds no grant for it
  4  the human must consent again
  5  haasd cannot be reached (not running, wrong --socket, no permission)
  6  no token with the time asked for right now: try again later
  7  forbidden: no [[access]] rule gives this user that human (or scope)"""


def cmd_token(args: argparse.Namespace, out: TextIO) -> int:
    scope = words(args.scope)
    with HaasdClient(args.socket) as client:
        try:
            token = client.token(args.human_id, min_ttl=args.min_ttl, scope=scope)
        except HaasdClientError as exc:
            say_error(exc)
            return next((code for cls, code in TOKEN_EXITS if isinstance(exc, cls)), 1)
    print(token.access_token.reveal(), file=out)
    return EXIT_OK


def cmd_health(args: argparse.Namespace, out: TextIO) -> int:
    with HaasdClient(args.socket) as client:
        health = client.health()
    print(f"haasd is {printable(health.status)}", file=out)
    for reason in health.reasons:
        print(f"  - {printable(reason)}", file=out)
    return EXIT_OK if health.ok else EXIT_FAILURE


def status_online(args: argparse.Namespace, out: TextIO) -> int:
    """``haasd status`` without ``--config``: every grant, as the running haasd reports it."""
    with HaasdClient(args.socket) as client:
        humans = client.humans()
    if args.json:
        print(json.dumps({"humans": [h.to_json() for h in humans]}, indent=2), file=out)
    elif not humans:
        print("haasd holds no grants", file=out)
    else:
        print(table(humans, SystemClock().time()), file=out)
    return EXIT_OK
