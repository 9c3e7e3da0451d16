"""The ``haasd`` command.

Each subcommand is a small function from parsed arguments to an exit code. Errors that
haasd raises on purpose become one line on stderr — never a traceback: configuration
errors exit 2, others 1; a reader that closes standard output early ends the command
quietly with 141, as SIGPIPE would.

* :mod:`~haasd.cli._parser` — the commands, their options and help (:func:`build_parser`)
* :mod:`~haasd.cli._offline` — ``check-config``, ``keygen``, ``import``, ``status --config``
* :mod:`~haasd.cli._online` — ``token``, ``health``, ``status``: asking the running haasd
* :mod:`~haasd.cli._consent` — ``consent start``, ``finish``, ``listen``
* :mod:`~haasd.cli._maintenance` — ``rekey``, ``backup``, ``restore``
* :mod:`~haasd.cli._daemon` — ``run``, ``demo`` (their heavy imports load only for them)
* :mod:`~haasd.cli._common` — exit codes, error lines, the config, the grants table
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from haasd.cli._common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    Handler,
    closed_output,
    is_closed_output,
    say_error,
)
from haasd.cli._parser import build_parser
from haasd.errors import ConfigError, HaasdError

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``haasd`` command; its exit code. A reader that closes standard output
    early (``| head -1``) ends the command quietly, with 141 as SIGPIPE would."""
    try:
        try:
            return _command(argv)
        finally:
            sys.stdout.flush()  # here, not at exit, where a closed pipe prints a traceback
    except (BrokenPipeError, BaseExceptionGroup) as exc:
        if not is_closed_output(exc):
            raise
        return closed_output()


def _command(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args, sys.stdout)
    except ConfigError as exc:
        say_error(f"configuration error: {exc}")
        return EXIT_CONFIG
    except HaasdError as exc:
        say_error(exc)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
