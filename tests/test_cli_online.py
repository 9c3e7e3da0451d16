"""The commands that ask a running haasd (token, health, status), as scripts and probes
run them: ``python -m haasd`` in a subprocess, against a real TokenServer on a real
socket served by the test's own event loop."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest
from support import MARIA, TOKEN, FakeService, make_grant, rule, serving, socket_dir

from haasd.cli import main
from haasd.grants import State


async def haasd(*args: str, socket: str | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``python -m haasd ARGS`` with $HAASD_SOCKET=socket."""
    env = {k: v for k, v in os.environ.items() if k not in {"HAASD_SOCKET", "HAASD_CONFIG"}}
    if socket is not None:
        env["HAASD_SOCKET"] = socket
    done = await anyio.run_process([sys.executable, "-m", "haasd", *args], env=env, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The same, as ``main(ARGS)`` in a worker thread (the loop keeps serving): faster."""
    code = await anyio.to_thread.run_sync(main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


def missing_socket() -> str:
    return str(Path(socket_dir()) / "missing.sock")


# --- haasd token ----------------------------------------------------------------------------


async def test_token_prints_the_token_and_nothing_else() -> None:
    results: dict[str, tuple[int, str, str]] = {}
    async with serving() as s:

        async def run(name: str, *args: str, socket: str | None = None) -> None:
            results[name] = await haasd("token", *args, socket=socket)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "plain", MARIA, "--socket", s.path)
            asked = (
                "--min-ttl",
                "60",
                "--scope",
                "tasks:dispatch status:read",
                "--scope",
                "status:read",
            )
            tg.start_soon(lambda: run("asked", MARIA, *asked, socket=s.path))  # $HAASD_SOCKET
            tg.start_soon(run, "unreachable", MARIA, "--socket", missing_socket())
    assert results["plain"] == (0, f"{TOKEN}\n", "")
    assert results["asked"] == (0, f"{TOKEN}\n", "")
    code, out, err = results["unreachable"]
    assert (code, out, err.count("\n")) == (5, "", 1)
    assert err.startswith("haasd: ") and "systemctl status haasd" in err


async def test_token_exit_codes_say_what_went_wrong(capsys: pytest.CaptureFixture[str]) -> None:
    service = FakeService(
        [
            make_grant(),
            make_grant("usr_dead_1", ttl=0, state=State.NEEDS_RECONSENT),
            make_grant("usr_late_1", ttl=-5),  # expired, and refreshing fails: 503
        ]
    )
    allowed = ("usr_maria_*", "usr_dead_*", "usr_late_*", "usr_nobody")
    cases = {  # 5, unreachable, runs as a subprocess in the test above
        MARIA: 0,
        "usr_nobody": 3,
        "usr_dead_1": 4,
        "usr_late_1": 6,
        "usr_secret_1": 7,
        "maria": 1,  # not a human id: 400
    }
    results: dict[str, tuple[int, str, str]] = {}
    async with serving(service, [rule(humans=allowed)]) as s:
        for case in cases:
            results[case] = await in_process(capsys, "token", case, "--socket", s.path)
    assert {case: code for case, (code, _, _) in results.items()} == cases
    for case, (code, out, err) in results.items():
        if code:
            assert (out, err.count("\n"), err[:7]) == ("", 1, "haasd: "), case
    assert TOKEN not in "".join(err for _, _, err in results.values())


def test_token_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["token", "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    documented = ["3  unknown human", "4  the human must consent again", "5  haasd cannot be"]
    documented += ["6  no token", "7  forbidden", "$(haasd token usr_maria_42)"]
    for line in documented:
        assert line in out


def test_token_refuses_a_negative_min_ttl(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["token", MARIA, "--min-ttl", "-5"])
    assert exited.value.code == 2
    assert "whole seconds >= 0" in capsys.readouterr().err


# --- haasd health ---------------------------------------------------------------------------


async def test_health_exits_0_when_ok_and_1_when_degraded_or_unreachable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    service = FakeService([make_grant()])
    results: dict[str, tuple[int, str, str]] = {}
    async with serving(service) as s:

        async def run(name: str, *args: str, socket: str | None = None) -> None:
            results[name] = await haasd("health", *args, socket=socket)

        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: run("ok", socket=s.path))
            # a subprocess: httpcore's sync backend leaves the socket of a failed connect()
            # to the GC (a ResourceWarning, which this suite's filter makes an error)
            tg.start_soon(run, "unreachable", "--socket", missing_socket())
        service.reasons += ["store not writable: disk full", "2 grant(s) may expire"]
        degraded = await in_process(capsys, "health", "--socket", s.path)
    ok, unreachable = results["ok"], results["unreachable"]
    assert ok == (0, "haasd is ok\n", "")
    assert degraded == (
        1,
        "haasd is degraded\n  - store not writable: disk full\n  - 2 grant(s) may expire\n",
        "",
    )
    assert (unreachable[0], unreachable[1]) == (1, "")
    assert "cannot reach haasd on" in unreachable[2]


# --- haasd status (online) ------------------------------------------------------------------


async def test_status_asks_the_daemon_for_a_table_or_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    service = FakeService([make_grant(), make_grant("usr_ana_1", last_error="timeout")])
    async with serving(service) as s:
        table = await haasd("status", "--socket", s.path)
        as_json = await in_process(capsys, "status", "--json", "--socket", s.path)
    code, out, err = table
    lines = out.splitlines()
    assert (code, err, len(lines)) == (0, "", 3)
    header = ["HUMAN", "STATE", "ACCESS LEFT", "REFRESH LIMIT", "SCOPE", "LAST ERROR"]
    assert [cell.strip() for cell in lines[0].split("  ") if cell.strip()] == header
    assert lines[1].split()[:2] == ["usr_ana_1", "active"] and lines[1].endswith("timeout")
    assert lines[2].split()[0] == MARIA and lines[2].endswith("-")
    humans = json.loads(as_json[1])["humans"]
    assert [h["human_id"] for h in humans] == ["usr_ana_1", MARIA]
    assert humans[1]["access_expires_at"] == "2027-01-15T09:00:00Z"
    assert humans[1]["scope"] == "tasks:dispatch status:read"
    assert TOKEN not in out + as_json[1]


async def test_status_online_needs_an_admin_and_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with serving(rules=[rule()]) as s:
        code, out, err = await in_process(capsys, "status", "--socket", s.path)
    assert (code, out) == (1, "")
    assert "admin" in err


def test_status_takes_a_socket_or_a_config_not_both(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["status", "--socket", "a.sock", "--config", "haasd.toml"])
    assert exited.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


# --- server-sent text is shown escaped ------------------------------------------------------

#: what a hostile or broken HaaS answer may leave in a grant: clear the screen, a lone
#: surrogate, a forged line and a right-to-left override
HOSTILE = "\x1b[2J\ud800\n\u202e"
SHOWN = "\\x1b[2J\\ud800\\n\\u202e"


async def test_status_and_health_show_server_sent_text_escaped_never_raw(
    capsys: pytest.CaptureFixture[str],
) -> None:
    grant = make_grant(scope=("status:read", "x\x1b[2J\ud800"), last_error=f"boom {HOSTILE}")
    service = FakeService([grant])
    service.reasons.append(f"refresh failed: {HOSTILE}")
    async with serving(service) as s:
        status = await haasd_bytes("status", "--socket", s.path)
        health = await haasd_bytes("health", "--socket", s.path)
        as_json = await in_process(capsys, "status", "--json", "--socket", s.path)
    for _, out, err in (status, health):
        assert err == b""
        assert b"\x1b" not in out and "\u202e".encode() not in out
    assert (status[0], health[0]) == (0, 1)
    rows = status[1].decode("ascii").splitlines()
    assert len(rows) == 2  # the forged newline stays inside its cell
    assert rows[1].endswith(f"boom {SHOWN}")
    assert "status:read x\\x1b[2J\\ud800" in rows[1]
    assert f"  - refresh failed: {SHOWN}\n" in health[1].decode("ascii")
    assert "x\x1b[2J\ud800" in json.loads(as_json[1])["humans"][0]["scope"]  # JSON keeps it
    assert "\x1b" not in as_json[1]  # as an escape in the JSON text


async def haasd_bytes(*args: str) -> tuple[int, bytes, bytes]:
    """(exit code, stdout, stderr) of ``python -m haasd ARGS``, as the terminal gets them."""
    done = await anyio.run_process([sys.executable, "-m", "haasd", *args], check=False)
    return done.returncode, done.stdout, done.stderr
