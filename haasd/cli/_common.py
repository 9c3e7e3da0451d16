"""What the ``haasd`` commands share: exit codes, error lines, the config, the grants table."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from haasd.client import HumanStatus
from haasd.config import Config, load_config
from haasd.text import printable

__all__ = [
    "EXIT_CLOSED_OUTPUT",
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_OK",
    "Handler",
    "closed_output",
    "config_of",
    "config_path",
    "is_closed_output",
    "left",
    "printable",
    "say_error",
    "table",
    "words",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
#: the reader of standard output went away (``haasd consent start | head -1``): 128 +
#: SIGPIPE, what a shell reports for any command a closed pipe ended
EXIT_CLOSED_OUTPUT = 128 + signal.SIGPIPE

#: a subcommand: parsed arguments and standard output to an exit code
Handler = Callable[[argparse.Namespace, TextIO], int]


def say_error(message: object) -> None:
    """One line on stderr, ``haasd: message``: how haasd reports an error, never a traceback
    (the message escaped with :func:`printable`: it may quote the server)."""
    print(f"haasd: {printable(message)}", file=sys.stderr)


def is_closed_output(exc: BaseException) -> bool:
    """Whether ``exc`` only says that a pipe we wrote to was closed by its reader: a
    BrokenPipeError, or a group of nothing else (from inside a task group)."""
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(BrokenPipeError)
        return matched is not None and rest is None
    return isinstance(exc, BrokenPipeError)


def closed_output() -> int:
    """After a closed pipe: point standard output at /dev/null, so that the flush at
    exit has nowhere to fail and no traceback appears, and exit as SIGPIPE would have."""
    devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    return EXIT_CLOSED_OUTPUT


def config_path(args: argparse.Namespace) -> Path | None:
    """``--config``, else ``$HAASD_CONFIG``, else None (load_config's own default)."""
    path = args.config or os.environ.get("HAASD_CONFIG")
    return Path(path) if path else None


def config_of(args: argparse.Namespace) -> Config:
    return load_config(config_path(args))


def words(texts: Sequence[str] | None) -> list[str] | None:
    """Repeated options that may each hold several words separated by spaces, as one list."""
    return [word for text in texts for word in text.split()] if texts else None


def table(humans: Sequence[HumanStatus], now: float) -> str:
    """The grants as ``haasd status`` prints them, one aligned row each (every cell
    escaped with :func:`printable`)."""
    header = ("HUMAN", "STATE", "ACCESS LEFT", "REFRESH LIMIT", "SCOPE", "LAST ERROR")
    lines = [header]
    lines += [
        (
            printable(h.human_id),
            printable(h.state),
            left(h.access_expires_at - now),
            left(h.refresh_expires_at - now),
            printable(" ".join(h.scope)),
            printable(h.last_error or "-"),
        )
        for h in humans
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def left(seconds: float) -> str:
    """A time left, short: ``expired``, ``2.5d``, ``3.0h`` or ``4m05s``."""
    if seconds <= 0:
        return "expired"
    if seconds >= 86400:
        return f"{seconds / 86400:.1f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
