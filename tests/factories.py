"""Test data shared by the store tests."""

from __future__ import annotations

import secrets
from dataclasses import replace

from haasd.grants import Grant
from haasd.secret import Secret

#: a fixed wall-clock instant (2027-01-15) the store tests build their grants around
T0 = 1_800_000_000.0


def make_grant(human_id: str = "usr_1", **changes: object) -> Grant:
    """A fresh grant with distinctive random tokens (so byte scans can look for them)."""
    grant = Grant(
        human_id=human_id,
        environment="test",
        scope=("tasks:dispatch", "status:read"),
        access_token=Secret("haas_at_" + secrets.token_hex(16)),
        access_expires_at=T0 + 3600,
        refresh_token=Secret("haas_rt_" + secrets.token_hex(16)),
        refresh_expires_at=T0 + 30 * 86400,
        consented_at=T0,
    )
    return replace(grant, **changes)  # type: ignore[arg-type]
