"""The ``haasd`` command line: its commands, their options and their help."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, Protocol

from haasd import __version__
from haasd.cli._common import Handler
from haasd.cli._consent import (
    CONSENT_EPILOG,
    LISTEN_EPILOG,
    cmd_consent_finish,
    cmd_consent_listen,
    cmd_consent_start,
)
from haasd.cli._daemon import cmd_demo, cmd_run
from haasd.cli._maintenance import cmd_backup, cmd_move_store, cmd_rekey, cmd_restore
from haasd.cli._offline import cmd_check_config, cmd_import, cmd_keygen, cmd_status
from haasd.cli._online import EXIT_CODES_EPILOG, cmd_health, cmd_token

__all__ = ["build_parser"]

MOVE_EPILOG = """\
Every grant and pending consent is copied as it is (sealed, with the same key) into
the target, which must hold none; the source is left unchanged. Stop haasd first: the
command refuses while it runs on the source. Afterwards, point the config at the
target and start haasd on it -- never again on the source (refresh tokens rotate)."""


#: a subcommand group's ``add_parser``: makes one command's parser
_AddParser = Callable[..., argparse.ArgumentParser]


class _Arguments(Protocol):
    """A parser, or a group of its arguments."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action: ...


def build_parser() -> argparse.ArgumentParser:
    """The ``haasd`` parser: each command's parser names its handler (``handler``)."""
    parser = argparse.ArgumentParser(
        prog="haasd",
        description="Token daemon for the HaaS API: keeps every human's consent fresh.",
    )
    parser.add_argument("--version", action="version", version=f"haasd {__version__}")
    add = parser.add_subparsers(dest="command", required=True, metavar="COMMAND").add_parser
    _daemon_commands(add)
    _store_commands(add)
    _maintenance_commands(add)
    _asking_commands(add)
    _consent_commands(add)
    return parser


def _command(
    add: _AddParser,
    name: str,
    handler: Handler | None,
    help_text: str,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    p = add(
        name,
        help=help_text,
        description=help_text,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if handler is not None:
        p.set_defaults(handler=handler)
    return p


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="the TOML config file (default: $HAASD_CONFIG; HAASD_* variables override it)",
    )


def _socket_arg(p: _Arguments) -> None:
    p.add_argument(
        "--socket",
        metavar="PATH",
        help="haasd's socket (default: $HAASD_SOCKET, else /run/haasd/haasd.sock)",
    )


def _daemon_commands(add: _AddParser) -> None:
    """``demo`` and ``run``."""
    p = _command(add, "demo", cmd_demo, "the whole life cycle in a minute, with simulated humans")
    p.add_argument(
        "--speed",
        type=float,
        default=360.0,
        help="simulated seconds per real second (default 360: an hour per 10 s)",
    )
    p.add_argument("--duration", type=float, default=60.0, help="real seconds to run (default 60)")
    p = _command(
        add, "run", cmd_run, "run the daemon in the foreground (systemd, container, terminal)"
    )
    _config_arg(p)


def _store_commands(add: _AddParser) -> None:
    """``check-config``, ``keygen`` and ``import``: offline, on the config and the store."""
    p = _command(add, "check-config", cmd_check_config, "validate a configuration and its secrets")
    _config_arg(p)
    p = _command(add, "keygen", cmd_keygen, "write a new store key (mode 0600; never overwrites)")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the key")
    p = _command(add, "import", cmd_import, "store a grant from a token-exchange answer (JSON)")
    _config_arg(p)
    p.add_argument("json", metavar="JSON", help="a file holding the answer, or - for stdin")
    p.add_argument(
        "--human",
        metavar="ID",
        help="the human, when the answer does not name one (a plain RFC 6749 server)",
    )
    p.add_argument(
        "--scope",
        nargs="+",
        metavar="SCOPE",
        help="the scopes asked for, when the answer lists none (default: haas.scopes)",
    )


def _maintenance_commands(add: _AddParser) -> None:
    """``rekey``, ``backup``, ``restore`` and ``move-store``: the store as a whole."""
    p = _command(add, "rekey", cmd_rekey, "re-seal the store under a new key (haasd stopped)")
    _config_arg(p)
    p.add_argument("--new-key", required=True, metavar="FILE", help="a key from haasd keygen")
    p = _command(add, "backup", cmd_backup, "copy the store, still sealed (haasd may be running)")
    _config_arg(p)
    p.add_argument("out", metavar="OUT", help="the backup file to write (never overwritten)")
    p = _command(add, "restore", cmd_restore, "replace the store by a backup the key opens")
    _config_arg(p)
    p.add_argument("backup", metavar="BACKUP", help="a file written by haasd backup")
    p.add_argument(
        "--force",
        action="store_true",
        help="PostgreSQL: restore although other haasd sessions are connected (restart them)",
    )
    p = _command(
        add,
        "move-store",
        cmd_move_store,
        "copy the store into an empty one on the other backend (SQLite <-> PostgreSQL)",
        epilog=MOVE_EPILOG,
    )
    _config_arg(p)
    p.add_argument(
        "--to",
        required=True,
        metavar="TARGET",
        help="a postgresql:// URL (from SQLite), or the SQLite file to write (from PostgreSQL)",
    )
    p.add_argument(
        "--to-password-file",
        metavar="FILE",
        help="the target database's password (mode 0600); else $HAASD_STORE_PASSWORD or the"
        " store.password credential",
    )


def _asking_commands(add: _AddParser) -> None:
    """``status``, ``token`` and ``health``: questions to the running haasd."""
    p = _command(
        add,
        "status",
        cmd_status,
        "show every grant: asked of the running haasd (admin), or read from the store",
        epilog="Without --config, asks the running haasd over its socket (this user needs\n"
        "an admin [[access]] rule); with --config, reads the store itself.",
    )
    where = p.add_mutually_exclusive_group()
    _socket_arg(where)
    where.add_argument(
        "--config",
        metavar="FILE",
        help="read the store this TOML config names, offline (HAASD_* variables override it)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = _command(
        add,
        "token",
        cmd_token,
        "print a fresh access token for a human, and nothing else",
        epilog=EXIT_CODES_EPILOG,
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
    _socket_arg(p)
    p = _command(
        add,
        "health",
        cmd_health,
        "ask the running haasd whether it is healthy (exit 0) or not (exit 1)",
        epilog="For probes and container HEALTHCHECKs: prints the reasons when degraded;\n"
        "exit 1 also when haasd cannot be reached.",
    )
    _socket_arg(p)


def _consent_commands(add: _AddParser) -> None:
    """``consent start``, ``finish`` and ``listen``."""
    consent = _command(
        add,
        "consent",
        None,
        "onboard a human through the running haasd (admin): start, finish, or listen",
        epilog=CONSENT_EPILOG,
    )
    within = consent.add_subparsers(
        dest="consent_command", required=True, metavar="COMMAND"
    ).add_parser
    p = _command(within, "start", cmd_consent_start, "print the URL to send the human to")
    _asking(p)
    p = _command(
        within,
        "finish",
        cmd_consent_finish,
        "finish a consent from the URL the browser was sent back to",
    )
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--callback-url", metavar="URL", help="the whole redirect URL, pasted")
    given.add_argument("--state", metavar="S", help="the redirect's state (with --code)")
    p.add_argument(
        "--code",
        metavar="C",
        help="the redirect's code (with --state); write --code=C if it starts with '-'",
    )
    _socket_arg(p)
    p = _command(
        within,
        "listen",
        cmd_consent_listen,
        "start a consent and catch its redirect on a loopback port (RFC 8252 7.3)",
        epilog=LISTEN_EPILOG,
    )
    _asking(p)
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


def _asking(p: argparse.ArgumentParser) -> None:
    """What a consent asks for: scopes, a human, and the socket to ask through."""
    p.add_argument(
        "--scope",
        action="append",
        metavar="S",
        help="ask for scope S (repeat; default: the configured scopes, or the human's)",
    )
    p.add_argument("--human", metavar="HUMAN_ID", help="ask this human (a re-consent)")
    _socket_arg(p)


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
