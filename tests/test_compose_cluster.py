"""docs/compose.cluster.yaml: two haasd sidecars from the repository's image on one
PostgreSQL store. No container engine runs here, so the sidecars run as the containers
would run them — the image's ENV, the compose file's environment and entrypoint, the
secret files where compose mounts them (re-rooted under a temp dir) — as processes, on a
real throwaway database (tests/pg_cluster.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
from harness import CLIENT_ID, CLIENT_SECRET, simulator
from pg_cluster import PgDatabase
from support_deploy import REPO, exec_form, final_stage, image_env, rerooted, write_secret

from haasd.clock import ManualClock
from haasd.config import load_config
from haasd.crypto import Key

COMPOSE = REPO / "docs" / "compose.cluster.yaml"
TEXT = COMPOSE.read_text(encoding="utf-8")


def block(name: str) -> list[str]:
    """The lines of the top-level mapping ``name`` (``x-haasd: &haasd`` → ``x-haasd``)."""
    lines = TEXT.splitlines()
    start = next(n for n, line in enumerate(lines) if line.split(":")[0] == name)
    end = next((n for n in range(start + 1, len(lines)) if lines[n][:1].isalnum()), len(lines))
    return lines[start + 1 : end]


def sidecar_env() -> dict[str, str]:
    """``environment:`` of the haasd sidecars (``x-haasd``): a mapping of plain scalars."""
    env: dict[str, str] = {}
    inside = False
    for line in block("x-haasd"):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 2:
            inside = line.strip() == "environment:"
        elif inside and indent == 4:
            name, _, value = line.strip().partition(":")
            value = value.strip()
            env[name] = value[1:-1] if value[:1] in ("'", '"') else value
    assert env, "no environment in x-haasd"
    return env


def sidecar_list(key: str) -> list[str]:
    """A flow-sequence value of ``x-haasd`` (``entrypoint:``, ``test:``), as JSON reads it."""
    (line,) = [line for line in block("x-haasd") if line.strip().startswith(f"{key}: [")]
    value: list[str] = json.loads(line.split(":", 1)[1])
    return value


def test_the_sidecars_are_configured_for_postgresql_by_what_compose_gives_them() -> None:
    image, compose = image_env(), sidecar_env()
    # the image's own entrypoint, as is: its SQLite default does not stand in the way
    assert not [line for line in block("x-haasd") if line.strip().startswith("entrypoint:")]
    config = load_config(None, {**image, **compose})
    assert config.store.url == "postgresql://haasd@postgres:5432/haasd"
    assert config.store.password is not None
    assert config.store.password.describe() == "file /run/secrets/store.password"
    assert (config.cluster.lease, config.store.connect_timeout) == (15.0, 20.0)
    # the healthcheck (and `compose exec ... haasd status`) runs as the image's user:
    # without a rule of its own, haasd would refuse it and the sidecar never turn healthy
    (user,) = [i.args for i in final_stage() if i.keyword == "USER"]
    uid = int(user.split(":")[0])
    assert [(r.uid, r.admin) for r in config.access] == [(1000, False), (uid, True)]
    # every secret haasd reads is mounted where it looks; PostgreSQL gets its own copy
    for variable in ("HAASD_STORE_KEY_FILE", "HAASD_HAAS_CLIENT_SECRET_FILE"):
        assert f"target: {Path(image[variable]).name}\n" in TEXT
    assert "target: store.password\n" in TEXT
    assert "POSTGRES_PASSWORD_FILE: /run/secrets/db_password" in TEXT
    assert "synchronous_commit" not in "".join(  # left at its default, on
        line for line in TEXT.splitlines() if not line.lstrip().startswith("#")
    )
    # two sidecars and two apps, each app on its own sidecar's socket volume
    for n in (1, 2):
        sidecar = f"  haasd-{n}:\n    <<: *haasd\n    volumes:\n      - socket-{n}:/run/haasd\n"
        assert sidecar in TEXT
        assert f"      - socket-{n}:/run/haasd:ro\n" in TEXT


def sidecar_process(root: Path, db: PgDatabase, token_url: str, key: Key) -> subprocess.Popen[str]:
    """One sidecar as its container runs it: the image's entrypoint on the image's ENV and
    the compose environment, container paths under ``root``."""
    env = {name: rerooted(value, root) for name, value in image_env().items()}
    env.update({name: rerooted(value, root) for name, value in sidecar_env().items()})
    env.update(
        {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HAASD_STORE_URL": db.socket_url,  # the test's database, not the service "postgres"
            "HAASD_HAAS_CLIENT_ID": CLIENT_ID,
            "HAASD_HAAS_TOKEN_URL": token_url,
            "HAASD_HAAS_AUTHORIZE_URL": token_url.rsplit("/", 1)[0] + "/authorize",
            # this test's uid in place of the image's user, whose rule is an admin's
            "HAASD_ACCESS": json.dumps([{"uid": os.getuid(), "humans": ["*"], "admin": True}]),
        }
    )
    write_secret(Path(env["HAASD_STORE_KEY_FILE"]), key.to_text())
    write_secret(Path(env["HAASD_HAAS_CLIENT_SECRET_FILE"]), CLIENT_SECRET)
    write_secret(Path(env["HAASD_STORE_PASSWORD_FILE"]), "not-needed-by-a-trust-server")
    (root / "run/haasd").mkdir(parents=True, mode=0o750)
    haasd, *rest = exec_form("ENTRYPOINT")
    assert haasd == "haasd"
    command = [sys.executable, "-m", "haasd", *rest]
    return subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


async def haasd_at(socket: Path, *args: str) -> tuple[int, str]:
    done = await anyio.run_process(
        [sys.executable, "-m", "haasd", *args, "--socket", str(socket)], check=False
    )
    return done.returncode, done.stdout.decode()


async def test_two_sidecars_of_the_compose_file_share_one_database(
    short_dir: Path, pg_database: PgDatabase
) -> None:
    sim = simulator(ManualClock(start=time.time()))
    key = Key.generate()  # one key for every instance
    roots = [short_dir / "c1", short_dir / "c2"]
    async with sim.running():
        procs = [sidecar_process(root, pg_database, sim.token_url, key) for root in roots]
        try:
            sockets = [root / "run/haasd/haasd.sock" for root in roots]
            with anyio.fail_after(60):
                while not all(s.exists() for s in sockets):
                    for proc in procs:
                        assert proc.poll() is None, proc.communicate()[1]
                    await anyio.sleep(0.05)
            health = sidecar_list("test")
            assert health[:4] == ["CMD", "haasd", "health", "--socket"]
            for socket in sockets:  # the compose healthcheck, as the engine runs it
                assert await haasd_at(socket, *health[2:-2]) == (0, "haasd is ok\n")
            for _ in range(60):  # started together, each may see the other only at its
                out = (await haasd_at(sockets[1], "status"))[1]  # next heartbeat (5 s)
                if "cluster: 2 instances" in out:
                    break
                await anyio.sleep(0.2)
            assert "cluster: 2 instances" in out, out
            assert out.count("this instance") == 1
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            errors = [proc.communicate(timeout=20)[1] for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
    assert [proc.returncode for proc in procs] == [0, 0], errors
    for err in errors:
        assert key.to_text() not in err and CLIENT_SECRET not in err
