"""Shared fixtures. anyio's own pytest plugin runs the async tests (anyio_mode = auto)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"
