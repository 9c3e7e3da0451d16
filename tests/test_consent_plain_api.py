"""Consents through the whole daemon against a plain RFC 6749 server (answers without
``human_id`` or ``scope``) and with RFC 7009 revocation: the socket API's answers and
``haasd consent`` from a terminal, exit codes and messages."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support_daemon import Running, daemon_running, error_of, haasd_cli, query

PLAIN = {"name_humans": False, "include_scope": False}


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory whose socket paths fit AF_UNIX's 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="hp", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def plain(workdir: Path) -> AsyncIterator[Running]:
    async with daemon_running(workdir, sim_options=PLAIN, revocation=True, seed=False) as api:
        yield api


async def test_a_named_consent_through_the_api_serves_that_humans_tokens(plain: Running) -> None:
    started = await plain.start(human_id="usr_ann_1", scopes=["status:read"])
    assert started.status_code == 201
    body = started.json()
    assert "warning" not in body
    assert query(body["authorization_url"])["login_hint"] == "usr_ann_1"

    granted = await plain.callback(callback_url=await plain.approve(body["authorization_url"]))
    assert granted.status_code == 201
    assert (granted.json()["human_id"], granted.json()["scope"]) == ("usr_ann_1", "status:read")
    token = (await plain.http.get("/v1/tokens/usr_ann_1")).json()
    assert plain.sim.validate_access_token(token["access_token"]) == "usr_ann_1"
    assert token["scope"] == "status:read"


async def test_an_unnamed_consent_is_502_exchanged_revoked_then_start_warns(
    plain: Running,
) -> None:
    plain.sim.queue_human("usr_q_1")
    first = (await plain.start()).json()
    assert "warning" not in first
    refused = await plain.callback(callback_url=await plain.approve(first["authorization_url"]))

    assert refused.status_code == 502
    error = error_of(refused)
    assert (error["type"], error["server_error"], error["exchanged"], error["revoked"]) == (
        "exchange_failed",
        "unnamed_human",
        True,
        True,
    )
    assert "does not name the human in its token answer" in error["message"]
    assert "were revoked" in error["message"]
    assert (await plain.http.get("/v1/humans")).json() == {"humans": []}
    assert not plain.sim.has_active_grant("usr_q_1")

    warned = (await plain.start()).json()
    assert "will be refused at finish" in warned["warning"]
    assert "warning" not in (await plain.start(human_id="usr_ann_1")).json()


async def test_a_code_sent_and_lost_is_502_exchanged_one_never_sent_503(workdir: Path) -> None:
    async with daemon_running(workdir) as api:
        unsent = await api.approve((await api.start()).json()["authorization_url"])
        api.sim.fail_next(1, status=503)
        kept = await api.callback(callback_url=unsent)
        assert (kept.status_code, error_of(kept)["type"]) == (503, "exchange_unavailable")
        assert "finish the same callback again" in error_of(kept)["message"]

        spent = await api.approve((await api.start()).json()["authorization_url"])
        api.sim.drop_next(1, after_processing=True)
        lost = await api.callback(callback_url=spent)
        assert lost.status_code == 502
        error = error_of(lost)
        assert (error["type"], error["exchanged"]) == ("exchange_failed", True)
        assert "revoked" not in error, "no token reached haasd"
        assert error["message"].endswith("the code may have been spent; start a new consent")
        again = await api.callback(callback_url=spent)
        assert error_of(again)["type"] == "invalid_state"
        assert (await api.callback(callback_url=unsent)).status_code == 201


# --- from a terminal ------------------------------------------------------------------------


async def test_consent_start_warns_on_stderr_and_finish_says_the_code_is_spent(
    plain: Running,
) -> None:
    socket = ("--socket", plain.socket)
    code, out, err = await haasd_cli("consent", "start", *socket)
    assert (code, err) == (0, "")
    location = await plain.approve(out.splitlines()[0])

    code, out, err = await haasd_cli("consent", "finish", "--callback-url", location, *socket)
    assert (code, out, err.count("\n")) == (8, "", 1)
    assert err.startswith(
        "haasd: this server does not name the human in its token answer; start the consent "
        "with a human id"
    )
    assert "the tokens HaaS issued were revoked" in err

    code, out, err = await haasd_cli("consent", "start", *socket)
    assert code == 0
    assert out.splitlines()[0].startswith(plain.sim.authorize_url + "?")  # `| head -1`
    assert err.startswith("haasd: warning: the token server's last answer named no human")

    code, out, err = await haasd_cli("consent", "start", "--human", "usr_ann_1", *socket)
    assert (code, err) == (0, "")
    location = await plain.approve(out.splitlines()[0])
    code, out, err = await haasd_cli("consent", "finish", "--callback-url", location, *socket)
    assert (code, err) == (0, "")
    assert out.startswith("granted: usr_ann_1 (tasks:dispatch status:read); consent until ")


async def test_consent_finish_exits_6_when_the_code_was_not_spent_and_8_when_it_was(
    workdir: Path,
) -> None:
    async with daemon_running(workdir) as api:
        socket = ("--socket", api.socket)
        location = await api.approve((await api.start()).json()["authorization_url"])
        api.sim.fail_next(1, status=503)
        code, _, err = await haasd_cli("consent", "finish", "--callback-url", location, *socket)
        assert code == 6
        assert "the code was not spent: finish the same callback again before" in err

        api.sim.drop_next(1, after_processing=True)
        code, _, err = await haasd_cli("consent", "finish", "--callback-url", location, *socket)
        assert code == 8
        assert "start a new consent" in err
        assert "finish the same callback again" not in err
