"""One unreadable grant row quarantines that human and no other; an edited row does not
open; stores written before the row was bound migrate. All against real SQLite files,
edited as an attacker or a careless admin would, with the sqlite3 module."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from factories import T0, make_grant
from harness import HOUR, running, simulator
from previous_schema import write_previous_store
from structlog.testing import capture_logs
from support_daemon import daemon_at, seed_grant, write_config

from haasd.clock import ManualClock
from haasd.crypto import Key, Sealer, fingerprint
from haasd.errors import DecryptError, NeedsReconsentError, WrongKeyError
from haasd.grants import Grant, RefreshIntent, Serve, State, serve_decision
from haasd.store import Store
from haasd.store.schema import MIGRATIONS

UNREADABLE = "store row unreadable"
HUMANS = ("usr_a", "usr_b", "usr_c")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite hands results back through asyncio futures


@pytest.fixture
def key() -> Key:
    return Key.generate()


@pytest.fixture
def sealer(key: Key) -> Sealer:
    return Sealer(key)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "grants.db"


@contextmanager
def raw(db: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection, as an attacker or a careless admin would use."""
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        yield conn


def row_of(db: Path, human_id: str) -> tuple[Any, ...]:
    with raw(db) as conn:
        row = conn.execute("SELECT * FROM grants WHERE human_id = ?", (human_id,)).fetchone()
    assert row is not None
    return tuple(row)


def files_of(db: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(db.parent.iterdir()) if p.is_file()}


def tokens_of(grants: list[Grant]) -> list[str]:
    return [t.reveal() for g in grants for t in (g.access_token, g.refresh_token)]


def assert_no_token_in_the_clear(db: Path, tokens: list[str]) -> None:
    files = files_of(db)
    assert files  # the scan looked at something
    for name, data in files.items():
        for token in tokens:
            assert token.encode() not in data, f"a token is in the clear in {name}"
            assert token[8:].encode() not in data, f"a token body is in the clear in {name}"


async def seed(db: Path, sealer: Sealer) -> list[Grant]:
    grants = [make_grant(h) for h in HUMANS]
    async with await Store.open(db, sealer) as store:
        await store.put_grants(grants)
    return grants


def flip_a_ciphertext_byte(conn: sqlite3.Connection) -> None:
    (blob,) = conn.execute("SELECT refresh_token FROM grants WHERE human_id = 'usr_b'").fetchone()
    flipped = bytearray(blob)
    flipped[-20] ^= 0x01  # in the ciphertext, before the tag
    conn.execute("UPDATE grants SET refresh_token = ? WHERE human_id = 'usr_b'", (flipped,))


def swap_sealed_columns(conn: sqlite3.Connection) -> None:
    """usr_b gets usr_c's tokens (both sealed columns), as if to serve usr_c's token as b's."""
    conn.execute(
        "UPDATE grants SET (access_token, refresh_token) = (SELECT access_token, refresh_token"
        " FROM grants WHERE human_id = 'usr_c') WHERE human_id = 'usr_b'"
    )


# Each edit tampers with usr_b only, and what its quarantine reason then says.
EDITS: dict[str, tuple[Any, str]] = {
    "a flipped ciphertext byte": (flip_a_ciphertext_byte, "cannot open refresh_token"),
    "sealed columns from another human": (swap_sealed_columns, "cannot open access_token"),
    "a widened scope": (
        "UPDATE grants SET scope = 'tasks:dispatch status:read billing:write'",
        "cannot open access_token",
    ),
    # (set back to active: test_a_state_the_clock_moves_is_sealed_with_the_tokens)
    "an edited state": ("UPDATE grants SET state = 'reconsent_due'", "cannot open access_token"),
    "a later access expiry": (
        "UPDATE grants SET access_expires_at = access_expires_at + 86400",
        "cannot open access_token",
    ),
    "a later refresh limit": (
        "UPDATE grants SET refresh_expires_at = refresh_expires_at + 30 * 86400",
        "cannot open access_token",
    ),
    "an expiry that is not a number": (
        "UPDATE grants SET access_expires_at = 'tomorrow'",
        "access_expires_at is not a number",
    ),
    "a scope that is not UTF-8": (
        "UPDATE grants SET scope = CAST(x'7461736b733aff' AS TEXT)",
        "cannot open access_token",
    ),
}


def tamper(db: Path, what: str) -> str:
    """Apply the edit ``what`` to usr_b's row; the reason its quarantine must give."""
    edit, reason = EDITS[what]
    with raw(db) as conn:
        if callable(edit):
            edit(conn)
        else:
            conn.execute(f"{edit} WHERE human_id = 'usr_b'")
    return reason


# -- one row quarantined, the others served ------------------------------------------------


@pytest.mark.parametrize("what", list(EDITS))
async def test_an_edited_row_quarantines_its_human_and_the_others_load(
    db: Path, sealer: Sealer, what: str
) -> None:
    grants = await seed(db, sealer)
    reason = tamper(db, what)
    with capture_logs() as logs:
        async with await Store.open(db, sealer) as store:
            a, b, c = await store.list_grants()
            assert store.unreadable == {"usr_b"}
            assert await store.list_grants() == [a, b, c]  # warned once, not per read
            assert await store.get_grant("usr_b") == b
    assert (a, c) == (grants[0], grants[2])  # with their tokens
    assert b.human_id == "usr_b"
    assert b.state is State.NEEDS_RECONSENT
    assert b.last_error is not None
    assert b.last_error.startswith(f"{UNREADABLE}: {reason}")
    assert b.access_expires_at == 0.0
    assert b.scope == ()  # what the row says is not believed
    assert (b.access_token.reveal(), b.refresh_token.reveal()) == ("", "")
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [(e["human_id"], e["reason"].startswith(reason)) for e in warnings] == [("usr_b", True)]
    assert UNREADABLE in warnings[0]["event"]
    text = repr(logs)
    for token in tokens_of(grants):
        assert token not in text


async def test_a_quarantined_grant_is_never_served_and_its_empty_tokens_harm_nothing(
    db: Path, sealer: Sealer
) -> None:
    await seed(db, sealer)
    tamper(db, "a later access expiry")
    async with await Store.open(db, sealer) as store:
        b = await store.get_grant("usr_b")
    for min_ttl in (0.0, 300.0):
        assert serve_decision(b.state, b.access_expires_at, T0, min_ttl, 2.0) is (
            Serve.NEEDS_RECONSENT
        )
    assert fingerprint(b.refresh_token) == fingerprint("")  # what an intent would record
    assert "Secret('**********')" in repr(b)


async def test_a_wrong_key_is_still_refused_whole_and_untouched(db: Path, sealer: Sealer) -> None:
    await seed(db, sealer)
    tamper(db, "sealed columns from another human")
    before = files_of(db)
    with pytest.raises(WrongKeyError, match="the key does not match this store"):
        await Store.open(db, Sealer(Key.generate()))
    assert files_of(db) == before


# -- the evidence stays until a re-consent ---------------------------------------------


async def test_background_writes_leave_a_quarantined_row_as_it_is(db: Path, sealer: Sealer) -> None:
    await seed(db, sealer)
    tamper(db, "a widened scope")
    evidence = row_of(db, "usr_b")
    async with await Store.open(db, sealer) as store:
        b = await store.get_grant("usr_b")
        store.mark_served("usr_b", T0 + 10)
        store.mark_served("usr_a", T0 + 10)
        assert await store.flush_served() == 1  # usr_a's only
        await store.update_status(
            "usr_b", state=State.ACTIVE, last_error=None, consecutive_failures=0,
            next_refresh_at=T0,
        )  # fmt: skip
        await store.put_grants([replace(b, last_error="the limit"), make_grant("usr_d")])
        await store.put_grant(b)
        assert await store.finish_refresh(replace(b, access_expires_at=T0 + 3600)) is False
        with pytest.raises(NeedsReconsentError, match=UNREADABLE):
            await store.begin_refresh("usr_b", RefreshIntent("x", fingerprint(""), T0))
        assert store.unreadable == {"usr_b"}
        assert await store.count_grants() == 4
    assert row_of(db, "usr_b") == evidence
    assert row_of(db, "usr_a")[13] == T0 + 10  # last_served_at


async def test_a_re_consent_replaces_a_quarantined_row_and_ends_the_quarantine(
    db: Path, sealer: Sealer
) -> None:
    await seed(db, sealer)
    tamper(db, "a flipped ciphertext byte")
    consent = make_grant("usr_b", consented_at=T0 + 600)
    async with await Store.open(db, sealer) as store:
        await store.list_grants()
        await store.put_grant(consent)
        assert store.unreadable == frozenset()
        assert await store.get_grant("usr_b") == consent
    async with await Store.open(db, sealer) as store:
        assert (await store.list_grants())[1] == consent
        assert store.unreadable == frozenset()


async def test_deleting_a_quarantined_human_ends_the_quarantine(db: Path, sealer: Sealer) -> None:
    await seed(db, sealer)
    tamper(db, "a later refresh limit")
    async with await Store.open(db, sealer) as store:
        await store.list_grants()
        assert await store.delete_grant("usr_b") is True
        assert store.unreadable == frozenset()
        assert [g.human_id for g in await store.list_grants()] == ["usr_a", "usr_c"]


async def test_a_row_put_back_as_it_was_is_readable_again(db: Path, sealer: Sealer) -> None:
    grants = await seed(db, sealer)
    original = row_of(db, "usr_b")
    tamper(db, "a later access expiry")
    async with await Store.open(db, sealer) as store:
        stand_in = (await store.list_grants())[1]
        assert store.unreadable == {"usr_b"}
        with raw(db) as conn:
            conn.execute(
                "UPDATE grants SET access_expires_at = ? WHERE human_id = 'usr_b'", (original[4],)
            )
        assert await store.list_grants() == grants
        assert store.unreadable == frozenset()
        # the stand-in still held in memory somewhere never overwrites the good row
        await store.put_grants([stand_in, replace(stand_in, last_error="the limit")])
        assert await store.finish_refresh(stand_in) is False
    assert row_of(db, "usr_b") == original


# -- state changes re-seal; an edited state does not open ------------------------------


async def test_a_state_the_clock_moves_is_sealed_with_the_tokens(db: Path, sealer: Sealer) -> None:
    grants = await seed(db, sealer)
    async with await Store.open(db, sealer) as store:
        await store.update_status(
            "usr_b", state=State.NEEDS_RECONSENT, last_error="the limit",
            consecutive_failures=0, next_refresh_at=None,
        )  # fmt: skip
        await store.update_status(
            "usr_c", state=State.ACTIVE, last_error="network: timed out",
            consecutive_failures=1, next_refresh_at=T0 + 30,
        )  # fmt: skip
    async with await Store.open(db, sealer) as store:
        b = await store.get_grant("usr_b")
        assert b == replace(grants[1], state=State.NEEDS_RECONSENT, last_error="the limit")
        assert store.unreadable == frozenset()
    assert_no_token_in_the_clear(db, tokens_of(grants))
    with raw(db) as conn:  # "set it back to active", as the row was before
        conn.execute("UPDATE grants SET state = 'active' WHERE human_id = 'usr_b'")
    async with await Store.open(db, sealer) as store:
        b = await store.get_grant("usr_b")
        assert b.state is State.NEEDS_RECONSENT
        assert b.last_error is not None
        assert b.last_error.startswith(UNREADABLE)
        assert (await store.get_grant("usr_c")).last_error == "network: timed out"


async def test_a_row_edited_while_haasd_runs_is_not_resealed_by_a_state_change(
    db: Path, sealer: Sealer
) -> None:
    await seed(db, sealer)
    async with await Store.open(db, sealer) as store:
        await store.list_grants()
        tamper(db, "a later access expiry")
        evidence = row_of(db, "usr_b")
        with capture_logs() as logs:
            await store.update_status(
                "usr_b", state=State.RECONSENT_DUE, last_error=None,
                consecutive_failures=0, next_refresh_at=None,
            )  # fmt: skip
        assert store.unreadable == {"usr_b"}
        assert [e["human_id"] for e in logs if e["log_level"] == "warning"] == ["usr_b"]
    assert row_of(db, "usr_b") == evidence


# -- stores of the previous schema ------------------------------------------------------


async def test_a_store_of_the_previous_schema_is_resealed_once_and_bound(
    db: Path, key: Key, sealer: Sealer
) -> None:
    grants = [
        make_grant("usr_a"),
        make_grant("usr_b", state=State.RECONSENT_DUE, last_served_at=T0 + 5),
        make_grant("usr_c", state=State.NEEDS_RECONSENT, last_error="refused"),
    ]
    write_previous_store(db, key, grants)
    with raw(db) as conn:  # already unreadable before: stays as it is, quarantined
        conn.execute("UPDATE grants SET access_token = x'01' WHERE human_id = 'usr_c'")
    evidence = row_of(db, "usr_c")
    async with await Store.open(db, sealer) as store:
        a, b, c = await store.list_grants()
        assert store.unreadable == {"usr_c"}
    assert [a, b] == grants[:2]
    assert c.last_error is not None
    assert c.last_error.startswith(f"{UNREADABLE}: cannot open access_token")
    assert row_of(db, "usr_c") == evidence
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        (blob,) = conn.execute(
            "SELECT access_token FROM grants WHERE human_id = 'usr_a'"
        ).fetchone()
    with pytest.raises(DecryptError):  # no longer opens without its row's values
        sealer.open(blob, human_id="usr_a", column="access_token")
    assert_no_token_in_the_clear(db, tokens_of(grants))
    async with await Store.open(db, sealer) as store:  # once: nothing left to migrate
        assert await store.list_grants() == [a, b, c]
    with raw(db) as conn:
        conn.execute("UPDATE grants SET scope = 'tasks:dispatch' WHERE human_id = 'usr_a'")
    async with await Store.open(db, sealer) as store:
        await store.list_grants()
        assert store.unreadable == {"usr_a", "usr_c"}


async def test_no_token_is_in_the_clear_after_quarantines_and_reseals(
    db: Path, sealer: Sealer
) -> None:
    grants = await seed(db, sealer)
    tamper(db, "sealed columns from another human")
    async with await Store.open(db, sealer) as store:
        await store.list_grants()
        await store.update_status(
            "usr_a", state=State.RECONSENT_DUE, last_error=None, consecutive_failures=0,
            next_refresh_at=None,
        )  # fmt: skip
        fresh = make_grant("usr_b")
        await store.put_grant(fresh)
        refreshed = make_grant("usr_c")
        await store.finish_refresh(refreshed)
        assert_no_token_in_the_clear(db, tokens_of([*grants, fresh, refreshed]))
    assert_no_token_in_the_clear(db, tokens_of([*grants, fresh, refreshed]))


# -- haasd status, as an operator types it -----------------------------------------------


def haasd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haasd", *args],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("HAASD_")},
        timeout=60,
        check=False,
    )


@pytest.fixture
def config_file(tmp_path: Path, key: Key) -> Path:
    (tmp_path / "store.key").write_text(key.to_text() + "\n")
    (tmp_path / "store.key").chmod(0o600)
    (tmp_path / "state").mkdir()
    path = tmp_path / "haasd.toml"
    path.write_text(
        '[haas]\nenvironment = "test"\nclient_id = "app_1"\nclient_secret = "test-secret"\n'
        'redirect_uri = "http://127.0.0.1:8765/callback"\n'
        '[store]\npath = "state/haasd.db"\nkey_file = "store.key"\n'
    )
    return path


@pytest.mark.parametrize(
    "what", ["sealed columns from another human", "an expiry that is not a number"]
)
async def test_haasd_status_shows_the_quarantined_human_and_its_reason(
    config_file: Path, sealer: Sealer, what: str
) -> None:
    db = config_file.parent / "state" / "haasd.db"
    grants = await seed(db, sealer)
    reason = tamper(db, what)

    table = haasd("status", "--config", str(config_file))
    assert table.returncode == 0, table.stderr
    assert "Traceback" not in table.stdout + table.stderr
    assert table.stderr == ""
    lines = {line.split()[0]: line for line in table.stdout.splitlines()[1:]}
    assert lines.keys() == set(HUMANS)
    assert "needs_reconsent" in lines["usr_b"]
    assert f"{UNREADABLE}: {reason}" in lines["usr_b"]
    assert "active" in lines["usr_a"] and "active" in lines["usr_c"]

    as_json = haasd("status", "--config", str(config_file), "--json")
    assert as_json.returncode == 0, as_json.stderr
    rows = {row["human_id"]: row for row in json.loads(as_json.stdout)["humans"]}
    assert rows["usr_b"]["state"] == "needs_reconsent"
    assert rows["usr_b"]["last_error"].startswith(f"{UNREADABLE}: {reason}")
    assert rows["usr_a"]["state"] == "active"
    for token in tokens_of(grants):
        assert token not in table.stdout + as_json.stdout


async def test_haasd_import_replaces_a_quarantined_human(config_file: Path, sealer: Sealer) -> None:
    db = config_file.parent / "state" / "haasd.db"
    await seed(db, sealer)
    tamper(db, "a widened scope")
    answer = config_file.parent / "answer.json"
    answer.write_text(
        json.dumps(
            {
                "access_token": "haas_at_" + "b" * 32,
                "token_type": "Bearer",
                "expires_in": 3600,
                "refresh_token": "haas_rt_" + "b" * 32,
                "scope": "status:read",
                "human_id": "usr_b",
            }
        )
    )
    result = haasd("import", "--config", str(config_file), str(answer))
    assert result.returncode == 0, result.stderr
    assert "replaced the grant of usr_b" in result.stdout
    async with await Store.open(db, sealer) as store:
        b = await store.get_grant("usr_b")
        assert store.unreadable == frozenset()
    assert (b.state, b.scope, b.access_token.reveal()) == (
        State.ACTIVE, ("status:read",), "haas_at_" + "b" * 32,
    )  # fmt: skip


# -- the engine over a store with a quarantined human --------------------------------------


async def test_the_engine_serves_the_others_and_refuses_the_quarantined_human(
    tmp_path: Path, key: Key
) -> None:
    sim = simulator(ManualClock())
    async with sim.running():
        async with running(tmp_path, sim=sim, key=key) as h:
            await h.consent("usr_a")
            await h.consent("usr_b")
        tamper(tmp_path / "haasd.db", "a later access expiry")
        async with running(tmp_path, sim=sim, key=key) as h:
            await h.refresher.open_sealed()  # as the daemon does once it serves
            assert h.store.unreadable == {"usr_b"}
            served = await h.refresher.ensure_fresh("usr_a", min_ttl=60)
            assert served.access_token.reveal().startswith("haas_at_")
            with pytest.raises(NeedsReconsentError, match=UNREADABLE):
                await h.refresher.ensure_fresh("usr_b")
            health = h.refresher.health()
            assert health.status == "degraded"
            reasons = health.reasons
            assert any("usr_b" in reason for reason in reasons)
            await h.clock.advance(2 * HOUR)  # refreshes and flushes go on around it
            assert (await h.refresher.ensure_fresh("usr_a", min_ttl=60)).human_id == "usr_a"
            assert h.store.unreadable == {"usr_b"}
            await h.consent("usr_b")  # a re-consent ends the quarantine
            assert h.store.unreadable == frozenset()
            assert (await h.refresher.ensure_fresh("usr_b")).state is State.ACTIVE


async def test_the_daemon_finds_an_edited_row_soon_after_it_serves_unasked(
    short_dir: Path,
) -> None:
    """A row's tokens are opened when its human is first asked for or, right after READY,
    by a pass between requests: an edited row is quarantined within seconds, before
    anyone asks for it, and the others are served meanwhile."""
    clock = ManualClock(start=time.time())
    sim = simulator(clock)
    async with sim.running():
        config = write_config(short_dir, sim.token_url)
        await seed_grant(short_dir, sim, "usr_a")
        await seed_grant(short_dir, sim, "usr_b")
        tamper(short_dir / "haasd.db", "a later access expiry")
        async with daemon_at(config, clock) as (_, client):
            with anyio.fail_after(10):
                while (health := (await client.get("/v1/health")).json())["status"] == "ok":  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            assert any("usr_b" in reason for reason in health["reasons"]), health
            assert (await client.get("/v1/tokens/usr_a")).status_code == 200
            refused = await client.get("/v1/tokens/usr_b")
            assert refused.status_code == 409
            assert UNREADABLE in refused.json()["error"]["message"]
