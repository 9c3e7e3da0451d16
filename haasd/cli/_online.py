"""The commands that ask the running haasd over its socket: ``token``, ``health``, ``status``."""

from __future__ import annotations

import argparse
import json
from typing import TextIO

from haasd.cli._common import EXIT_FAILURE, EXIT_OK, left, printable, say_error, table, words
from haasd.client import (
    Cluster,
    DaemonUnreachable,
    Forbidden,
    HaasdClient,
    HaasdClientError,
    NeedsReconsent,
    TokenUnavailable,
    UnknownHuman,
)
from haasd.clock import SystemClock

__all__ = [
    "EXIT_CODES_EPILOG",
    "TOKEN_EXITS",
    "cluster_block",
    "cmd_health",
    "cmd_token",
    "status_online",
]

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
    """``haasd status`` without ``--config``: every grant, as the running haasd reports it;
    on a PostgreSQL store also the instances sharing it (from ``GET /v1/health``)."""
    with HaasdClient(args.socket) as client:
        humans = client.humans()  # first: without an admin rule, this is what is refused
        health = client.health()
    cluster = health.cluster
    if args.json:
        body: dict[str, object] = {"humans": [h.to_json() for h in humans]}
        if cluster is not None:
            body["cluster"] = cluster.to_json()
        print(json.dumps(body, indent=2), file=out)
        return EXIT_OK
    if not humans:
        print("haasd holds no grants", file=out)
    else:
        print(table(humans, SystemClock().time()), file=out)
    if cluster is not None:
        print(f"\n{cluster_block(cluster)}", file=out)
        if not health.ok:
            print("  haasd is degraded: `haasd health` says why", file=out)
    return EXIT_OK


def cluster_block(cluster: Cluster) -> str:
    """The instances sharing the store, one aligned row each, the one that answered
    marked (every cell escaped: other instances wrote them into the database)."""
    count = len(cluster.instances)
    header = ("INSTANCE", "HOST/PID", "HEARTBEAT", "LEASES", "")
    rows = [header]
    rows += [
        (
            printable(i.instance_id),
            f"{printable(i.host)}/{i.pid}",
            f"{_ago(i.heartbeat_age)} ago",
            str(i.leases),
            "this instance" if i.instance_id == cluster.instance else "",
        )
        for i in cluster.instances
    ]
    widths = [max(len(row[n]) for row in rows) for n in range(len(header))]
    lines = [f"cluster: {count} instance{'' if count == 1 else 's'}"]
    lines += [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)


def _ago(seconds: float) -> str:
    """A heartbeat's age: ``0.4s`` under a minute, else as :func:`left` says it."""
    return f"{max(0.0, seconds):.1f}s" if seconds < 60 else left(seconds)
