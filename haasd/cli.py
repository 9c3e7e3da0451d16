"""The ``haasd`` command.

Each subcommand is a small function from parsed arguments to an exit code. Errors that
haasd raises on purpose become one line on stderr — never a traceback: configuration
errors exit 2, others 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import anyio

from haasd import __version__
from haasd.app import main_run, policy_of, sealer_of
from haasd.clock import SystemClock
from haasd.config import Config, load_config
from haasd.crypto import Key
from haasd.errors import ConfigError, HaasdError, StoreError, TokenResponseError, UnknownHumanError
from haasd.grants import Grant, new_grant, status_of
from haasd.store import Store
from haasd.tokens import parse_token_response

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _config(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("HAASD_CONFIG")
    return load_config(Path(path) if path else None)


# --- commands ----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    path = args.config or os.environ.get("HAASD_CONFIG")
    return main_run(Path(path) if path else None)


def cmd_check_config(args: argparse.Namespace, out: TextIO) -> int:
    config = _config(args)
    config.haas.client_secret.load()
    sealer_of(config)
    h = config.haas
    print(f"{config.source}: OK", file=out)
    print(f"  environment      {h.environment} (client {h.client_id})", file=out)
    print(f"  token endpoint   {h.token_url} ({h.token_request_format} bodies)", file=out)
    print(f"  scopes           {' '.join(h.scopes)}", file=out)
    print(f"  plan             {h.plan}: {h.requests_per_minute} requests/min", file=out)
    print(f"  store            {config.store.path}", file=out)
    print(f"  store key        from {config.store.key.describe()}", file=out)
    print(f"  client secret    from {h.client_secret.describe()}", file=out)
    print(f"  socket           {config.socket.path} (mode {config.socket.mode:04o})", file=out)
    rules = len(config.access)
    print(
        f"  access rules     {rules or 'none: root and the daemon user only, as admins'}",
        file=out,
    )
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace, out: TextIO) -> int:
    path = Path(args.out)
    key = Key.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
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
    config = _config(args)
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
    answer = parse_token_response(data)
    policy = policy_of(config)
    grant = new_grant(
        answer, config.haas.environment, SystemClock().time(), policy, random.Random()
    )

    async def store_it() -> bool:
        async with await Store.open(config.store.path, sealer_of(config)) as store:
            try:
                await store.get_grant(grant.human_id)
            except UnknownHumanError:
                replaced = False
            else:
                replaced = True
            await store.put_grant(grant)
            return replaced

    replaced = anyio.run(store_it)
    verb = "replaced the grant of" if replaced else "imported a grant for"
    print(f"{verb} {grant.human_id} (scope: {' '.join(grant.scope)})", file=out)
    return EXIT_OK


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    config = _config(args)
    policy = policy_of(config)
    now = SystemClock().time()

    if not config.store.path.exists():
        raise StoreError(
            f"no store at {config.store.path}; `haasd import` or `haasd run` creates it"
        )

    async def read() -> list[Grant]:
        async with await Store.open(config.store.path, sealer_of(config)) as store:
            return await store.list_grants()

    grants = sorted(anyio.run(read), key=lambda g: g.human_id)
    rows = [status_of(g, now, policy) for g in grants]
    if args.json:
        print(json.dumps({"humans": rows}, indent=2), file=out)
        return EXIT_OK
    if not rows:
        print("no grants stored", file=out)
        return EXIT_OK
    print(_table(grants, rows, now), file=out)
    return EXIT_OK


def _table(grants: Sequence[Grant], rows: Sequence[dict[str, object]], now: float) -> str:
    header = ("HUMAN", "STATE", "ACCESS LEFT", "REFRESH LIMIT", "SCOPE", "LAST ERROR")
    lines = [header]
    for grant, row in zip(grants, rows, strict=True):
        lines.append(
            (
                grant.human_id,
                str(row["state"]),
                _left(grant.access_expires_at - now),
                _left(grant.refresh_expires_at - now),
                str(row["scope"]),
                str(row["last_error"] or "-"),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _left(seconds: float) -> str:
    if seconds <= 0:
        return "expired"
    if seconds >= 86400:
        return f"{seconds / 86400:.1f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


# --- parsing -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="haasd",
        description="Token daemon for the HaaS API: keeps every human's consent fresh.",
    )
    parser.add_argument("--version", action="version", version=f"haasd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace, TextIO], int], help_text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    def config_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            metavar="FILE",
            help="the TOML config file (default: $HAASD_CONFIG; HAASD_* variables override it)",
        )

    p = command("run", cmd_run, "run the daemon in the foreground (systemd, container, terminal)")
    config_arg(p)
    p = command("check-config", cmd_check_config, "validate a configuration and its secrets")
    config_arg(p)
    p = command("keygen", cmd_keygen, "write a new store key (mode 0600; never overwrites)")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the key")
    p = command("import", cmd_import, "store a grant from a token-exchange answer (JSON)")
    config_arg(p)
    p.add_argument("json", metavar="JSON", help="a file holding the answer, or - for stdin")
    p = command("status", cmd_status, "show every stored grant (read from the store)")
    config_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace, TextIO], int] = args.handler
    try:
        return handler(args, sys.stdout)
    except ConfigError as exc:
        print(f"haasd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except HaasdError as exc:
        print(f"haasd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
