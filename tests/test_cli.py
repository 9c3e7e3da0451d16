"""The offline commands, as an operator types them."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from factories import make_grant

from haasd.cli import main
from haasd.cli._common import printable, say_error
from haasd.cli._consent import _print_granted
from haasd.client import FinishedConsent, HumanStatus
from haasd.config import load_config
from haasd.crypto import Key
from haasd.parts import sealer_of
from haasd.store import Store

ROOT = Path(__file__).resolve().parent.parent
ANSWER: dict[str, str | int] = {
    "access_token": "haas_at_CliTestAccessToken0001",
    "token_type": "Bearer",
    "expires_in": 3600,
    "refresh_token": "haas_rt_CliTestRefreshToken0001",
    "scope": "tasks:dispatch status:read",
    "human_id": "usr_maria_42",
}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    assert main(["keygen", "--out", str(tmp_path / "store.key")]) == 0
    path = tmp_path / "haasd.toml"
    path.write_text(
        '[haas]\nenvironment = "test"\nclient_id = "app_1"\nclient_secret = "test-secret"\n'
        'redirect_uri = "http://127.0.0.1:8765/callback"\n'
        '[store]\npath = "state/haasd.db"\nkey_file = "store.key"\n'
    )
    (tmp_path / "state").mkdir()
    return path


def run(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haasd", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def test_keygen_writes_a_private_key_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "k"
    assert main(["keygen", "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = Key.from_text(out.read_text())
    assert key.key_id in capsys.readouterr().out
    before = out.read_bytes()
    assert main(["keygen", "--out", str(out)]) == 1
    assert "never overwrites" in capsys.readouterr().err
    assert out.read_bytes() == before


@pytest.mark.parametrize("dangling", [False, True])
def test_keygen_refuses_a_symlink_at_its_output_and_leaves_the_target_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dangling: bool
) -> None:
    target = tmp_path / "elsewhere"
    if not dangling:
        target.write_text("not a key\n")
    out = tmp_path / "store.key"
    out.symlink_to(target)
    assert main(["keygen", "--out", str(out)]) == 1
    assert "never overwrites" in capsys.readouterr().err
    assert out.is_symlink()
    if dangling:
        assert not target.exists()
    else:
        assert target.read_text() == "not a key\n"


def test_check_config_accepts_the_example(tmp_path: Path) -> None:
    key = tmp_path / "store.key"
    assert main(["keygen", "--out", str(key)]) == 0
    result = run(
        "check-config",
        "--config",
        str(ROOT / "config.example.toml"),
        env={"HAASD_CLIENT_SECRET": "x", "HAASD_STORE_KEY": key.read_text()},
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "300 requests/min" in result.stdout
    assert "environment variable HAASD_STORE_KEY" in result.stdout


def test_check_config_rejects_with_file_key_reason_and_exit_2(config_file: Path) -> None:
    config_file.write_text(config_file.read_text() + "[refresh]\nrefresh_fraction = 2\n")
    result = run("check-config", "--config", str(config_file))
    assert result.returncode == 2
    assert f"{config_file}: refresh.refresh_fraction: must be between 0 and 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_refuses_a_bad_key_file(config_file: Path) -> None:
    (config_file.parent / "store.key").write_text("not a key")
    result = run("check-config", "--config", str(config_file))
    assert result.returncode == 2
    assert "store.key_file" in result.stderr and "not a haasd key" in result.stderr
    assert "not a key" not in result.stderr.split("not a haasd key")[1]


def test_status_offline_shows_stored_text_escaped_never_raw(config_file: Path) -> None:
    """A grant whose scope and last error hold an ANSI escape (as a hostile HaaS answer
    may leave them), read from the store by ``haasd status --config``."""
    config = load_config(config_file, {})
    grant = make_grant(
        "usr_maria_42", scope=("status:read", "x\x1b[2J"), last_error="boom \x1b[2J\u202e"
    )

    async def store_it() -> None:
        async with await Store.open(config.store.path, sealer_of(config)) as store:
            await store.put_grant(grant)

    anyio.run(store_it)
    done = subprocess.run(
        [sys.executable, "-m", "haasd", "status", "--config", str(config_file)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, b"")
    assert b"\x1b" not in done.stdout and "\u202e".encode() not in done.stdout
    row = done.stdout.decode("ascii").splitlines()[1]
    assert "status:read x\\x1b[2J" in row and row.endswith("boom \\x1b[2J\\u202e")


def test_import_then_status(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    answer = config_file.parent / "answer.json"
    answer.write_text(json.dumps(ANSWER))
    assert main(["import", "--config", str(config_file), str(answer)]) == 0
    assert "imported a grant for usr_maria_42" in capsys.readouterr().out
    assert main(["import", "--config", str(config_file), str(answer)]) == 0
    assert "replaced the grant of usr_maria_42" in capsys.readouterr().out

    assert main(["status", "--config", str(config_file)]) == 0
    table = capsys.readouterr().out
    assert "usr_maria_42" in table
    assert "active" in table
    assert "tasks:dispatch status:read" in table
    assert main(["status", "--config", str(config_file), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["humans"]
    assert row["state"] == "active" and row["scope"] == "tasks:dispatch status:read"
    assert row["refresh_expires_at"].endswith("Z")
    for token in (str(ANSWER["access_token"]), str(ANSWER["refresh_token"])):
        assert token not in table and token not in json.dumps(row)
    state = config_file.parent / "state"
    for f in state.iterdir():
        data = f.read_bytes()
        assert str(ANSWER["access_token"]).encode() not in data, f.name
        assert str(ANSWER["refresh_token"]).encode() not in data, f.name


def test_import_from_stdin(config_file: Path) -> None:
    result = run("import", "--config", str(config_file), "-", stdin=json.dumps(ANSWER))
    assert result.returncode == 0, result.stderr
    assert "usr_maria_42" in result.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "is not JSON"),
        (json.dumps({**ANSWER, "expires_in": "soon"}), "expires_in must be a whole number"),
        (json.dumps({k: v for k, v in ANSWER.items() if k != "refresh_token"}), "refresh_token"),
        (json.dumps({**ANSWER, "human_id": "maria"}), "human_id"),
    ],
)
def test_import_of_malformed_input_says_why_and_writes_nothing(
    config_file: Path, text: str, message: str
) -> None:
    result = run("import", "--config", str(config_file), "-", stdin=text)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert str(ANSWER["access_token"]) not in result.stderr
    assert list((config_file.parent / "state").iterdir()) == []


def test_status_without_a_store_says_so(config_file: Path) -> None:
    result = run("status", "--config", str(config_file))
    assert result.returncode == 1
    assert "no store at" in result.stderr


def test_wrong_key_refuses_and_leaves_the_store_untouched(config_file: Path) -> None:
    answer = json.dumps(ANSWER)
    assert run("import", "--config", str(config_file), "-", stdin=answer).returncode == 0
    state = config_file.parent / "state"
    before = {f.name: f.read_bytes() for f in state.iterdir()}
    other = config_file.parent / "other.key"
    assert main(["keygen", "--out", str(other)]) == 0
    result = run("status", "--config", str(config_file), env={"HAASD_STORE_KEY": other.read_text()})
    assert result.returncode == 1
    assert "does not match this store" in result.stderr
    assert {f.name: f.read_bytes() for f in state.iterdir()} == before


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("usr_maria_42 tasks:dispatch", "usr_maria_42 tasks:dispatch"),
        ("\x1b[2J\x07\x7f\x9b", "\\x1b[2J\\x07\\x7f\\x9b"),
        ("a\nb\r\tc", "a\\nb\\r\\tc"),
        ("\ud800 lone", "\\ud800 lone"),
        ("\u202eevil\u200b", "\\u202eevil\\u200b"),
        ("Zoë 日本 \\x1b", "Zoë 日本 \\x1b"),  # letters, and a backslash the server typed
    ],
)
def test_printable_escapes_controls_and_invisibles_only(text: str, shown: str) -> None:
    assert printable(text) == shown
    assert printable(text).isprintable()


def test_consent_messages_and_errors_show_server_sent_text_escaped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = HumanStatus(
        "usr_\x1b]0;pwned\x07", "active", ("status:read", "\x1b[2J"), 0.0, 0.0, None, None
    )
    done = FinishedConsent(status, "c1", (), True, True, "usr_maria_\ud800")
    out = io.StringIO()
    _print_granted(done, out)
    say_error("exchange_failed: \x1b[31mred\x1b[0m")
    printed, err = out.getvalue(), capsys.readouterr().err
    assert "\x1b" not in printed + err and "\ud800" not in printed
    assert printed.startswith("granted: usr_\\x1b]0;pwned\\x07 (status:read \\x1b[2J)")
    assert "the consent was for usr_maria_\\ud800" in printed
    assert err == "haasd: exchange_failed: \\x1b[31mred\\x1b[0m\n"


def test_check_config_says_when_haasd_access_replaces_the_files_rules(
    config_file: Path,
) -> None:
    with config_file.open("a") as f:
        f.write('[[access]]\nuid = 1000\nhumans = ["usr_*"]\n')
    replaced = run("check-config", "--config", str(config_file), env={"HAASD_ACCESS": "[]"})
    assert replaced.returncode == 0, replaced.stderr
    note = f"note: HAASD_ACCESS replaces the 1 [[access]] rule(s) of {config_file}\n"
    assert replaced.stdout.endswith(note)
    assert "note:" not in run("check-config", "--config", str(config_file)).stdout


def with_haas_keys(config_file: Path, *lines: str) -> Path:
    text = config_file.read_text().replace("[store]", "\n".join(lines) + "\n[store]", 1)
    config_file.write_text(text)
    return config_file


def test_import_of_an_answer_without_expires_in_takes_the_default_lifetime(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_haas_keys(config_file, 'default_token_lifetime = "20m"')
    answer = config_file.parent / "answer.json"
    answer.write_text(json.dumps({k: v for k, v in ANSWER.items() if k != "expires_in"}))
    before = datetime.now(UTC)
    assert main(["import", "--config", str(config_file), str(answer)]) == 0
    capsys.readouterr()
    assert main(["status", "--config", str(config_file), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["humans"]
    expires = datetime.fromisoformat(row["access_expires_at"])
    assert 1190 <= (expires - before).total_seconds() <= 1260


def test_check_config_shows_the_client_auth_method_and_revocation(config_file: Path) -> None:
    plain = run("check-config", "--config", str(config_file))
    assert "json bodies, client_secret_post" in plain.stdout
    assert "revocation       none" in plain.stdout
    with_haas_keys(
        config_file,
        'token_endpoint_auth_method = "client_secret_basic"',
        'revocation_url = "https://auth.example.com/revoke"',
    )
    standard = run("check-config", "--config", str(config_file))
    assert standard.returncode == 0, standard.stderr
    assert "client_secret_basic" in standard.stdout
    assert "revocation       https://auth.example.com/revoke" in standard.stdout


def test_import_takes_the_human_and_scope_a_plain_rfc6749_answer_leaves_out(
    config_file: Path,
) -> None:
    answer = {
        "access_token": "at-plain-1",
        "token_type": "bearer",
        "expires_in": 3600,
        "refresh_token": "rt-plain-1",
    }
    text = json.dumps(answer)
    unnamed = run("import", "--config", str(config_file), "-", stdin=text)
    assert unnamed.returncode != 0
    assert "pass it with --human ID" in unnamed.stderr and "Traceback" not in unnamed.stderr
    named = run(
        "import",
        "--config",
        str(config_file),
        "-",
        "--human",
        "usr_plain_1",
        "--scope",
        "status:read",
        stdin=text,
    )
    assert named.returncode == 0, named.stderr
    assert named.stdout == "imported a grant for usr_plain_1 (scope: status:read)\n"
    bad = run("import", "--config", str(config_file), "--human", "maria", "-", stdin=text)
    assert bad.returncode != 0 and "not a human id" in bad.stderr
