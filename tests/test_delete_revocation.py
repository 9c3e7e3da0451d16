"""A grant haasd no longer holds does not live on at the server: DELETE revokes it."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
from harness import simulator
from support_daemon import daemon_at, seed_grant, write_config

from haasd.clock import ManualClock


async def test_deleting_a_grant_revokes_its_refresh_token_at_the_server(short_dir: Path) -> None:
    clock = ManualClock(start=time.time())
    sim = simulator(clock, rotate_refresh_tokens=True)
    async with sim.running():
        extra = f'[haas]\nrevocation_url = "{sim.revocation_url}"\n'
        config_path = write_config(short_dir, sim.token_url)
        text = config_path.read_text().replace("[haas]\n", extra, 1)
        config_path.write_text(text)
        access = await seed_grant(short_dir, sim, "usr_gone_1")
        await seed_grant(short_dir, sim, "usr_kept_2")
        async with daemon_at(config_path, clock) as (_, client):
            assert sim.validate_access_token(access) == "usr_gone_1"
            assert (await client.delete("/v1/humans/usr_gone_1")).status_code == 204
            with anyio.fail_after(10):
                while sim.has_active_grant("usr_gone_1"):  # noqa: ASYNC110 - the server's word
                    await anyio.sleep(0.05)
            assert sim.validate_access_token(access) is None
            assert sim.has_active_grant("usr_kept_2")
            kept = await client.get("/v1/tokens/usr_kept_2")
            assert kept.status_code == 200


async def test_without_a_revocation_url_delete_only_forgets(short_dir: Path) -> None:
    clock = ManualClock(start=time.time())
    sim = simulator(clock)
    async with sim.running():
        config_path = write_config(short_dir, sim.token_url)
        await seed_grant(short_dir, sim, "usr_gone_1")
        async with daemon_at(config_path, clock) as (_, client):
            assert (await client.delete("/v1/humans/usr_gone_1")).status_code == 204
            assert (await client.get("/v1/tokens/usr_gone_1")).status_code == 404
        assert sim.has_active_grant("usr_gone_1")  # nothing was sent to the server
