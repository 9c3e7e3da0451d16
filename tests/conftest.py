"""Shared fixtures. anyio's own pytest plugin runs the async tests (anyio_mode = auto)."""

from __future__ import annotations

import sys

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
