"""The commands that work on the files themselves, without a running haasd.

``check-config``, ``keygen``, ``import``, and ``status --config`` (which reads the store).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
from pathlib import Path
from typing import TextIO

import anyio

from haasd.cli._common import EXIT_OK, config_of, table
from haasd.cli._online import status_online
from haasd.client import HumanStatus
from haasd.clock import SystemClock
from haasd.config import access_override_note
from haasd.crypto import Key
from haasd.errors import (
    HaasdError,
    StoreError,
    TokenResponseError,
    UnknownHumanError,
    UnnamedHumanError,
)
from haasd.grants import Grant, new_grant, status_of
from haasd.parts import open_store, policy_of, sealer_of
from haasd.text import printable
from haasd.tokens import HUMAN_ID_RE, parse_first_grant

__all__ = ["cmd_check_config", "cmd_import", "cmd_keygen", "cmd_status"]

# The PostgreSQL pool logs each failed connection attempt; a command reports the outcome
# in its one error line instead (whoever configures logging, as ``haasd run`` does, still
# gets the records: they propagate as ever, this only keeps Python's last-resort handler
# from printing them).
logging.getLogger("psycopg").addHandler(logging.NullHandler())


def cmd_check_config(args: argparse.Namespace, out: TextIO) -> int:
    config = config_of(args)
    config.haas.client_secret.load()
    sealer_of(config)
    if config.store.password is not None:
        config.store.password.load_optional()  # a password file must be readable, 0600
    h = config.haas
    print(f"{config.source}: OK", file=out)
    print(f"  environment      {h.environment} (client {h.client_id})", file=out)
    print(
        f"  token endpoint   {h.token_url} ({h.token_request_format} bodies, "
        f"{h.token_endpoint_auth_method})",
        file=out,
    )
    print(f"  revocation       {h.revocation_url or 'none'}", file=out)
    print(f"  scopes           {' '.join(h.scopes)}", file=out)
    print(f"  plan             {h.plan}: {h.requests_per_minute} requests/min", file=out)
    print(f"  store            {config.store.describe()}", file=out)
    print(f"  store key        from {config.store.key.describe()}", file=out)
    print(f"  client secret    from {h.client_secret.describe()}", file=out)
    print(f"  socket           {config.socket.path} (mode {config.socket.mode:04o})", file=out)
    rules = len(config.access)
    print(
        f"  access rules     {rules or 'none: root and the daemon user only, as admins'}",
        file=out,
    )
    note = access_override_note(config)
    if note is not None:
        print(f"note: {note}", file=out)
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace, out: TextIO) -> int:
    path = Path(args.out)
    key = Key.generate()
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise HaasdError(
            f"{path} exists; haasd keygen never overwrites a key (a store sealed with it "
            "would become unreadable). Choose another path, or remove it yourself."
        ) from None
    except OSError as exc:
        raise HaasdError(f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key.to_text() + "\n")
    print(f"wrote a new 256-bit store key to {path} (mode 0600, key id {key.key_id})", file=out)
    return EXIT_OK


def cmd_import(args: argparse.Namespace, out: TextIO) -> int:
    config = config_of(args)
    source = "standard input" if args.json == "-" else args.json
    try:
        text = sys.stdin.read() if args.json == "-" else Path(args.json).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HaasdError(f"cannot read {source}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TokenResponseError(
            f"{source} is not JSON ({exc.msg} at line {exc.lineno}); pass the token "
            "endpoint's answer as the HaaS docs show it"
        ) from None
    if args.human is not None and not HUMAN_ID_RE.fullmatch(args.human):
        raise HaasdError(f"--human: {printable(args.human)!r} is not a human id (usr_...)")
    try:
        answer = parse_first_grant(
            data,
            human_id=args.human,
            scope=tuple(args.scope) if args.scope else config.haas.scopes,
            default_lifetime=config.haas.default_token_lifetime,
        )
    except UnnamedHumanError:
        raise TokenResponseError(
            f"{source} does not name the human (no human_id): pass it with --human ID"
        ) from None
    policy = policy_of(config)
    grant = new_grant(
        answer, config.haas.environment, SystemClock().time(), policy, random.Random()
    )

    async def store_it() -> bool:
        # SQLite: under the instance lock, not while a daemon, rekey or restore runs
        async with open_store(config) as store:
            try:
                await store.get_grant(grant.human_id, warn=False)
            except UnknownHumanError:
                replaced = False
            else:
                replaced = True
            await store.put_grant(grant)
            return replaced

    replaced = anyio.run(store_it)
    verb = "replaced the grant of" if replaced else "imported a grant for"
    scope = printable(" ".join(grant.scope))
    print(f"{verb} {printable(grant.human_id)} (scope: {scope})", file=out)
    return EXIT_OK


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    if args.config is None:
        return status_online(args, out)
    config = config_of(args)
    policy = policy_of(config)
    now = SystemClock().time()

    if config.store.url is None and not config.store.path.exists():
        raise StoreError(
            f"no store at {config.store.path}; `haasd import` or `haasd run` creates it"
        )

    async def read() -> list[Grant]:
        if config.store.url is not None:  # a reader creates no store: none yet is an error
            from haasd.pgmaintenance import password_of
            from haasd.pgstore._rows import require_store

            await require_store(config.store.url, password_of(config))
        async with open_store(config, lock=False) as store:
            # an unreadable row shows as its human in needs_reconsent, with the reason
            return await store.list_grants(warn=False)

    grants = sorted(anyio.run(read), key=lambda g: g.human_id)
    rows = [status_of(g, now, policy) for g in grants]
    if args.json:
        print(json.dumps({"humans": rows}, indent=2), file=out)
        return EXIT_OK
    if not rows:
        print("no grants stored", file=out)
        return EXIT_OK
    print(table([HumanStatus.from_json(row) for row in rows], now), file=out)
    return EXIT_OK
