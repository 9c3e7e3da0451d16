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
from haasd.client import (
    AsyncHaasdClient,
    DaemonUnreachable,
    FinishedConsent,
    Forbidden,
    HaasdClient,
    HaasdClientError,
    HumanStatus,
    NeedsReconsent,
    StartedConsent,
    TokenUnavailable,
    UnknownHuman,
)
from haasd.clock import SystemClock, rfc3339
from haasd.config import Config, load_config
from haasd.crypto import Key
from haasd.errors import (
    ConfigError,
    HaasdError,
    ListenTimeoutError,
    StoreError,
    TokenResponseError,
    UnknownHumanError,
)
from haasd.grants import Grant, new_grant, status_of
from haasd.parts import policy_of, sealer_of
from haasd.store import Store
from haasd.tokens import parse_token_response

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
#: ``haasd token``'s exit codes, by what went wrong (anything else: 1)
TOKEN_EXITS: tuple[tuple[type[HaasdClientError], int], ...] = (
    (UnknownHuman, 3),
    (NeedsReconsent, 4),
    (DaemonUnreachable, 5),
    (TokenUnavailable, 6),
    (Forbidden, 7),
)
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


def _config(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("HAASD_CONFIG")
    return load_config(Path(path) if path else None)


# --- commands ----------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from haasd.demo import main_demo

    return main_demo(args.speed, args.duration)


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    path = args.config or os.environ.get("HAASD_CONFIG")
    from haasd.app import main_run  # the daemon's imports; other commands start faster

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
        from haasd.app import instance_lock  # not while a daemon, rekey or restore runs

        async with (
            instance_lock(config.store.path),
            await Store.open(config.store.path, sealer_of(config)) as store,
        ):
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


def cmd_rekey(args: argparse.Namespace, out: TextIO) -> int:
    from haasd.maintenance import main_rekey

    return main_rekey(_config(args), Path(args.new_key), out)


def cmd_backup(args: argparse.Namespace, out: TextIO) -> int:
    from haasd.maintenance import main_backup

    return main_backup(_config(args), Path(args.out), out)


def cmd_restore(args: argparse.Namespace, out: TextIO) -> int:
    from haasd.maintenance import main_restore

    return main_restore(_config(args), Path(args.backup), out)


def _words(texts: Sequence[str] | None) -> list[str] | None:
    return [word for text in texts for word in text.split()] if texts else None


def cmd_token(args: argparse.Namespace, out: TextIO) -> int:
    scope = _words(args.scope)
    with HaasdClient(args.socket) as client:
        try:
            token = client.token(args.human_id, min_ttl=args.min_ttl, scope=scope)
        except HaasdClientError as exc:
            print(f"haasd: {exc}", file=sys.stderr)
            return next((code for cls, code in TOKEN_EXITS if isinstance(exc, cls)), 1)
    print(token.access_token.reveal(), file=out)
    return EXIT_OK


def _consent_failed(exc: HaasdError) -> int:
    print(f"haasd: {exc}", file=sys.stderr)
    if isinstance(exc, ListenTimeoutError):
        return CONSENT_EXITS["listen_timeout"]
    return CONSENT_EXITS.get(exc.error_type, 1) if isinstance(exc, HaasdClientError) else 1


def _print_started(started: StartedConsent, out: TextIO) -> None:
    print(started.authorization_url, file=out)
    left = _left(started.expires_at - SystemClock().time())
    print(f"expires at {rfc3339(started.expires_at)} (in {left})", file=out, flush=True)


def _print_granted(done: FinishedConsent, out: TextIO) -> None:
    limit = rfc3339(done.status.refresh_expires_at)
    print(f"granted: {done.human_id} ({' '.join(done.scope)}); consent until {limit}", file=out)
    if done.replaced:
        print(f"  replaced the earlier grant of {done.human_id}", file=out)
    if done.different_human:
        print(
            f"  note: the consent was for {done.expected_human_id}, but {done.human_id} "
            f"approved; the grant of {done.expected_human_id} is unchanged",
            file=out,
        )


def cmd_consent_start(args: argparse.Namespace, out: TextIO) -> int:
    with HaasdClient(args.socket) as client:
        try:
            started = client.start_consent(_words(args.scope), args.human)
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
                print(f"waiting for the redirect to {started.redirect_uri}", file=out, flush=True)

            return await listen_for_consent(
                client,
                _words(args.scope),
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


def cmd_health(args: argparse.Namespace, out: TextIO) -> int:
    with HaasdClient(args.socket) as client:
        health = client.health()
    print(f"haasd is {health.status}", file=out)
    for reason in health.reasons:
        print(f"  - {reason}", file=out)
    return EXIT_OK if health.ok else EXIT_FAILURE


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    if args.config is None:
        return _status_online(args, out)
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
    print(_table([HumanStatus.from_json(row) for row in rows], now), file=out)
    return EXIT_OK


def _status_online(args: argparse.Namespace, out: TextIO) -> int:
    with HaasdClient(args.socket) as client:
        humans = client.humans()
    if args.json:
        print(json.dumps({"humans": [h.to_json() for h in humans]}, indent=2), file=out)
    elif not humans:
        print("haasd holds no grants", file=out)
    else:
        print(_table(humans, SystemClock().time()), file=out)
    return EXIT_OK


def _table(humans: Sequence[HumanStatus], now: float) -> str:
    header = ("HUMAN", "STATE", "ACCESS LEFT", "REFRESH LIMIT", "SCOPE", "LAST ERROR")
    lines = [header]
    lines += [
        (
            h.human_id,
            h.state,
            _left(h.access_expires_at - now),
            _left(h.refresh_expires_at - now),
            " ".join(h.scope),
            h.last_error or "-",
        )
        for h in humans
    ]
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
        name: str,
        handler: Callable[[argparse.Namespace, TextIO], int] | None,
        help_text: str,
        epilog: str | None = None,
        within: argparse._SubParsersAction[argparse.ArgumentParser] = sub,
    ) -> argparse.ArgumentParser:
        p = within.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if handler is not None:
            p.set_defaults(handler=handler)
        return p

    def config_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            metavar="FILE",
            help="the TOML config file (default: $HAASD_CONFIG; HAASD_* variables override it)",
        )

    p = command("demo", cmd_demo, "the whole life cycle in a minute, with simulated humans")
    p.add_argument(
        "--speed",
        type=float,
        default=360.0,
        help="simulated seconds per real second (default 360: an hour per 10 s)",
    )
    p.add_argument("--duration", type=float, default=60.0, help="real seconds to run (default 60)")
    p = command("run", cmd_run, "run the daemon in the foreground (systemd, container, terminal)")
    config_arg(p)
    p = command("check-config", cmd_check_config, "validate a configuration and its secrets")
    config_arg(p)
    p = command("keygen", cmd_keygen, "write a new store key (mode 0600; never overwrites)")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the key")
    p = command("import", cmd_import, "store a grant from a token-exchange answer (JSON)")
    config_arg(p)
    p.add_argument("json", metavar="JSON", help="a file holding the answer, or - for stdin")
    p = command("rekey", cmd_rekey, "re-seal the store under a new key (haasd stopped)")
    config_arg(p)
    p.add_argument("--new-key", required=True, metavar="FILE", help="a key from haasd keygen")
    p = command("backup", cmd_backup, "copy the store, still sealed (haasd may be running)")
    config_arg(p)
    p.add_argument("out", metavar="OUT", help="the backup file to write (never overwritten)")
    p = command("restore", cmd_restore, "replace the store by a backup the key opens")
    config_arg(p)
    p.add_argument("backup", metavar="BACKUP", help="a file written by haasd backup")

    def socket_arg(p: argparse._ActionsContainer) -> None:
        p.add_argument(
            "--socket",
            metavar="PATH",
            help="haasd's socket (default: $HAASD_SOCKET, else /run/haasd/haasd.sock)",
        )

    p = command(
        "status",
        cmd_status,
        "show every grant: asked of the running haasd (admin), or read from the store",
        epilog="Without --config, asks the running haasd over its socket (this user needs\n"
        "an admin [[access]] rule); with --config, reads the store itself.",
    )
    where = p.add_mutually_exclusive_group()
    socket_arg(where)
    where.add_argument(
        "--config",
        metavar="FILE",
        help="read the store this TOML config names, offline (HAASD_* variables override it)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = command(
        "token",
        cmd_token,
        "print a fresh access token for a human, and nothing else",
        epilog=_EXIT_CODES_EPILOG,
    )
    p.add_argument("human_id", metavar="HUMAN_ID", help="e.g. usr_maria_42")
    p.add_argument(
        "--min-ttl",
        type=_seconds,
        default=0,
        metavar="S",
        help="the token must have at least S more seconds (haasd refreshes if needed)",
    )
    p.add_argument(
        "--scope",
        action="append",
        metavar="S",
        help="the grant must hold scope S (repeat, or give several separated by spaces)",
    )
    socket_arg(p)
    p = command(
        "health",
        cmd_health,
        "ask the running haasd whether it is healthy (exit 0) or not (exit 1)",
        epilog="For probes and container HEALTHCHECKs: prints the reasons when degraded;\n"
        "exit 1 also when haasd cannot be reached.",
    )
    socket_arg(p)
    consent = command(
        "consent",
        None,
        "onboard a human through the running haasd (admin): start, finish, or listen",
        epilog=_CONSENT_EPILOG,
    )
    within = consent.add_subparsers(dest="consent_command", required=True, metavar="COMMAND")

    def asking(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--scope",
            action="append",
            metavar="S",
            help="ask for scope S (repeat; default: the configured scopes, or the human's)",
        )
        p.add_argument("--human", metavar="HUMAN_ID", help="ask this human (a re-consent)")
        socket_arg(p)

    p = command("start", cmd_consent_start, "print the URL to send the human to", within=within)
    asking(p)
    p = command(
        "finish",
        cmd_consent_finish,
        "finish a consent from the URL the browser was sent back to",
        within=within,
    )
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--callback-url", metavar="URL", help="the whole redirect URL, pasted")
    given.add_argument("--state", metavar="S", help="the redirect's state (with --code)")
    p.add_argument("--code", metavar="C", help="the redirect's code (with --state)")
    socket_arg(p)
    p = command(
        "listen",
        cmd_consent_listen,
        "start a consent and catch its redirect on a loopback port (RFC 8252 7.3)",
        epilog=_LISTEN_EPILOG,
        within=within,
    )
    asking(p)
    p.add_argument(
        "--port",
        type=_port,
        metavar="N",
        help="listen on port N (0: any free port; default: the redirect URI's own)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help="give up after S seconds (default: when the consent expires)",
    )
    return parser


_EXIT_CODES_EPILOG = """\
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


_CONSENT_EPILOG = """\
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
  6  try again later: the code exchange failed for now (finish the same URL again
     before the consent expires), or too many consents are pending
  7  forbidden: this user has no admin [[access]] rule
  8  the HaaS server refused the code: start a new consent
  9  `listen`: no redirect arrived in time"""

_LISTEN_EPILOG = """\
For a loopback redirect_uri (such as http://127.0.0.1:8765/callback): asks haasd for its
redirect URI, listens on that address only (127.0.0.1 or ::1, never a public one), starts
the consent via haasd with the redirect on the listening port, prints the URL, hands the
one redirect to haasd to finish, closes the port, and prints the human and scopes
granted. It runs through haasd's socket, like `start` and `finish`: no store, key or
client secret is needed here. Exit codes as for `haasd consent`."""


def _port(text: str) -> int:
    if not (text.isdigit() and int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, not {text!r}")
    return int(text)


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected whole seconds >= 0, not {text!r}")
    return value


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
