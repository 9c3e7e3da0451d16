"""Shared fixtures. anyio's own pytest plugin runs the async tests (anyio_mode = auto)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from haasd.logs import configure_logging


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    """Warnings and errors only, as an operator's default would show; tests about logs
    configure their own stream."""
    configure_logging("warning", "console", stream=sys.stderr)


@pytest.fixture
def debug_logs() -> None:
    """Let debug lines through, for tests that capture them (capture_logs)."""
    configure_logging("debug", "console", stream=sys.stderr)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose socket paths fit AF_UNIX's 108 bytes (pytest's tmp_path's do not)."""
    path = Path(tempfile.mkdtemp(prefix="hd", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def workdir(short_dir: Path) -> Path:
    """The directory of a daemon's config, store and socket: a :func:`short_dir`."""
    return short_dir
