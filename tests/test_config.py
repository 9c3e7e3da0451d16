"""check-config's contract: good files load; every bad one names file, key and reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from haasd.config import access_override_note, load_config, parse_duration
from haasd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """
[haas]
environment = "test"
client_id = "app_123"
client_secret = "s3cret-for-tests"
redirect_uri = "http://127.0.0.1:8765/callback"
"""


def write(tmp_path: Path, text: str, name: str = "haasd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_example_config_is_valid_and_complete() -> None:
    env = {"HAASD_CLIENT_SECRET": "x", "HAASD_STORE_KEY": "y"}
    config = load_config(ROOT / "config.example.toml", env)
    assert config.haas.plan == "pro"
    assert config.haas.requests_per_minute == 300
    assert config.access, "the example shows an access rule"
    assert config.refresh.refresh_fraction == 0.75


def test_minimal_config_takes_documented_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), {})
    assert config.haas.token_url == "https://auth.api4human.com/token"
    assert config.haas.authorize_url == "https://auth.api4human.com/authorize"
    assert config.haas.plan == "free"
    assert config.haas.requests_per_minute == 60
    assert config.haas.scopes == ("tasks:dispatch", "status:read")
    assert config.haas.token_request_format == "json"
    assert config.refresh.refresh_token_lifetime == 30 * 86400
    assert config.refresh.reconsent_warning == 7 * 86400
    assert config.socket.mode == 0o660
    assert config.log.format == "json"
    assert config.access == ()
    assert config.haas.client_secret.load().reveal() == "s3cret-for-tests"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (90, 90.0),
        ("90s", 90.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("30d", 2592000.0),
        ("1h30m", 5400.0),
        ("45", 45.0),
    ],
)
def test_durations(text: object, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "1w", "h", "-5", 0, True, "1h 2x", [1]])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match=r"duration|longer than zero"):
        parse_duration(text)


BAD_CASES = [
    ("[refresh]\nrefresh_fraction = 1.5\n", "refresh.refresh_fraction", "between 0 and 1"),
    ("[refresh]\nrefresh_fraction = 0\n", "refresh.refresh_fraction", "between 0 and 1"),
    ('[refresh]\nreconsent_warning = "31d"\n', "refresh.reconsent_warning", "shorter than"),
    (
        '[refresh]\nrefresh_token_lifetime = "soon"\n',
        "refresh.refresh_token_lifetime",
        "not a duration",
    ),
    ("[refresh]\nrefresh_fracton = 0.5\n", "refresh.refresh_fracton", "unknown key"),
    ("[refrsh]\nx = 1\n", "refrsh", "unknown section"),
    ('[socket]\nmode = "0666"\n', "socket.mode", "must not be reachable by others"),
    ("[socket]\nmode = 660\n", "socket.mode", "octal mode as a string"),
    ('[log]\nlevel = "loud"\n', "log.level", "one of"),
    ('[log]\nformat = "xml"\n', "log.format", "one of"),
    ('[[access]]\nhumans = ["usr_*"]\n', "access[0]", "needs uid, user, gid or group"),
    ("[[access]]\nuid = 1000\n", "access[0].humans", "non-empty list"),
    (
        '[[access]]\nuid = 1000\nhumans = ["usr_*"]\nscopes = ["*"]\n',
        "access[0].scopes",
        "request the minimum",
    ),
    (
        '[[access]]\nuser = "no-such-user-here"\nhumans = ["usr_*"]\n',
        "access[0].user",
        "no such user",
    ),
    ('[[access]]\nuid = 1000\nhumans = ["usr_*"]\nadmn = true\n', "access[0].admn", "unknown key"),
]


@pytest.mark.parametrize(("extra", "key", "reason"), BAD_CASES)
def test_bad_values_name_file_key_and_reason(
    tmp_path: Path, extra: str, key: str, reason: str
) -> None:
    path = write(tmp_path, MINIMAL + extra)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.file == str(path)
    assert info.value.key == key
    assert reason in info.value.reason
    assert str(path) in str(info.value) and key in str(info.value)


HAAS_CASES = [
    ('environment = "staging"', "haas.environment", "one of"),
    ('plan = "gold"', "haas.plan", "'free', 'pro', 'enterprise'"),
    ('token_url = "http://auth.example.com/token"', "haas.token_url", "use https"),
    ('token_url = "auth.example.com/token"', "haas.token_url", "absolute"),
    ('authorize_url = "ftp://127.0.0.1/x"', "haas.authorize_url", "absolute http(s)"),
    ('scopes = ["*"]', "haas.scopes", "request the minimum"),
    ('scopes = ["tasks:delete"]', "haas.scopes", "unknown scope"),
    ("scopes = []", "haas.scopes", "at least one"),
    ("requests_per_minute = -1", "haas.requests_per_minute", "positive"),
    ('token_request_format = "xml"', "haas.token_request_format", "one of"),
    (
        'token_endpoint_auth_method = "basic"',
        "haas.token_endpoint_auth_method",
        "'client_secret_post', 'client_secret_basic'",
    ),
    ('revocation_url = "http://auth.example.com/revoke"', "haas.revocation_url", "use https"),
    ('revocation_url = "/revoke"', "haas.revocation_url", "absolute"),
    ('default_token_lifetime = "soon"', "haas.default_token_lifetime", "not a duration"),
    ("default_token_lifetime = 0", "haas.default_token_lifetime", "longer than zero"),
    ('default_token_lifetime = "0.5s"', "haas.default_token_lifetime", "between 1s and 366d"),
    ('default_token_lifetime = "400d"', "haas.default_token_lifetime", "between 1s and 366d"),
]


@pytest.mark.parametrize(("line", "key", "reason"), HAAS_CASES)
def test_bad_haas_values(tmp_path: Path, line: str, key: str, reason: str) -> None:
    base = MINIMAL.replace('environment = "test"\n', "")  # each case sets at most one key
    path = write(tmp_path, base + line + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert (info.value.file, info.value.key) == (str(path), key)
    assert reason in info.value.reason


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/token",
        "http://127.5.0.1/token",
        "http://[::1]:80/t",
        "http://localhost/token",
        "https://auth.example.com/token",
    ],
)
def test_plain_http_only_for_loopback(tmp_path: Path, url: str) -> None:
    config = load_config(write(tmp_path, MINIMAL + f'token_url = "{url}"\n'), {})
    assert config.haas.token_url == url


def test_standard_oauth_keys_default_to_the_haas_docs(tmp_path: Path) -> None:
    haas = load_config(write(tmp_path, MINIMAL), {}).haas
    assert haas.token_endpoint_auth_method == "client_secret_post"
    assert haas.revocation_url is None
    assert haas.default_token_lifetime == 3600


def test_standard_oauth_keys_are_read_from_file_and_environment(tmp_path: Path) -> None:
    text = (
        MINIMAL
        + 'token_endpoint_auth_method = "client_secret_basic"\n'
        + 'revocation_url = "http://127.0.0.1:9000/revoke"\n'
        + 'default_token_lifetime = "20m"\n'
    )
    haas = load_config(write(tmp_path, text), {}).haas
    assert haas.token_endpoint_auth_method == "client_secret_basic"
    assert haas.revocation_url == "http://127.0.0.1:9000/revoke"
    assert haas.default_token_lifetime == 1200
    env = {
        "HAASD_HAAS_TOKEN_ENDPOINT_AUTH_METHOD": "client_secret_post",
        "HAASD_HAAS_DEFAULT_TOKEN_LIFETIME": "90",
    }
    haas = load_config(write(tmp_path, text), env).haas
    assert (haas.token_endpoint_auth_method, haas.default_token_lifetime) == (
        "client_secret_post",
        90,
    )


def test_a_bad_auth_method_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    env = {"HAASD_HAAS_TOKEN_ENDPOINT_AUTH_METHOD": "private_key_jwt"}
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL), env)
    assert info.value.file == "environment variable HAASD_HAAS_TOKEN_ENDPOINT_AUTH_METHOD"
    assert info.value.key == "haas.token_endpoint_auth_method"
    assert "client_secret_basic" in info.value.reason


def test_missing_required_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[haas]\nclient_id = "a"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.key == "haas.redirect_uri"
    assert "HAASD_HAAS_REDIRECT_URI" in info.value.reason


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[haas\n"), {})
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml", {})


def test_inline_secret_refused_in_live_mode(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('"test"', '"live"'))
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.key == "haas.client_secret"
    assert 'only when environment = "test"' in info.value.reason
    assert "s3cret-for-tests" not in str(info.value)


def test_environment_alone_is_enough() -> None:
    env = {
        "HAASD_HAAS_CLIENT_ID": "app_1",
        "HAASD_HAAS_REDIRECT_URI": "https://app.example.com/cb",
        "HAASD_HAAS_PLAN": "enterprise",
        "HAASD_HAAS_SCOPES": "tasks:dispatch status:read tasks:read",
        "HAASD_REFRESH_REFRESH_FRACTION": "0.5",
        "HAASD_SOCKET_PATH": "/tmp/x/haasd.sock",
        "HAASD_STORE_PATH": "/tmp/x/haasd.db",
        "HAASD_ACCESS": '[{"uid": 1000, "humans": ["usr_*"], "admin": true}]',
        "HAASD_CLIENT_SECRET": "from-env",
    }
    config = load_config(None, env)
    assert config.haas.requests_per_minute == 1000
    assert config.haas.scopes == ("tasks:dispatch", "status:read", "tasks:read")
    assert config.refresh.refresh_fraction == 0.5
    assert str(config.socket.path) == "/tmp/x/haasd.sock"
    assert config.access[0].uid == 1000 and config.access[0].admin
    assert config.haas.client_secret.load().reveal() == "from-env"


RULES = """
[[access]]
uid = 1000
humans = ["usr_*"]
[[access]]
uid = 1001
humans = ["usr_maria_42"]
"""


def test_haasd_access_replacing_the_files_rules_is_said_not_silent(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + RULES)
    env = {"HAASD_ACCESS": '[{"uid": 2000, "humans": ["usr_*"], "admin": true}]'}
    config = load_config(path, env)
    assert [rule.uid for rule in config.access] == [2000]  # replaced, not added to
    assert config.access_replaced == 2
    note = f"HAASD_ACCESS replaces the 2 [[access]] rule(s) of {path}"
    assert access_override_note(config) == note
    emptied = load_config(path, {"HAASD_ACCESS": "[]"})  # root only, as admin: say so too
    assert (emptied.access, emptied.access_replaced) == ((), 2)


@pytest.mark.parametrize(
    ("text", "env"),
    [
        (MINIMAL + RULES, {}),  # the file's own rules
        (MINIMAL, {"HAASD_ACCESS": '[{"uid": 2000, "humans": ["usr_*"]}]'}),  # nothing replaced
    ],
)
def test_no_note_when_nothing_was_replaced(tmp_path: Path, text: str, env: dict[str, str]) -> None:
    config = load_config(write(tmp_path, text), env)
    assert (config.access_replaced, access_override_note(config)) == (0, None)


def test_environment_overrides_file_and_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "[refresh]\nrefresh_fraction = 0.5\n")
    assert (
        load_config(path, {"HAASD_REFRESH_REFRESH_FRACTION": "0.6"}).refresh.refresh_fraction == 0.6
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, {"HAASD_REFRESH_REFRESH_FRACTION": "2"})
    assert info.value.file == "environment variable HAASD_REFRESH_REFRESH_FRACTION"
    assert info.value.key == "refresh.refresh_fraction"
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(path, {"HAASD_REFRESH_FRACTON": "0.6"})


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '[store]\npath = "data/haasd.db"\n')
    assert load_config(path, {}).store.path == tmp_path / "data" / "haasd.db"


def test_secret_order_credentials_then_env_then_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "client_secret.txt"
    secret_file.write_text("from-file\n")
    secret_file.chmod(0o600)
    text = MINIMAL.replace(
        'client_secret = "s3cret-for-tests"', 'client_secret_file = "client_secret.txt"'
    )
    path = write(tmp_path, text)
    assert load_config(path, {}).haas.client_secret.load().reveal() == "from-file"
    env = {"HAASD_CLIENT_SECRET": "from-env"}
    assert load_config(path, env).haas.client_secret.load().reveal() == "from-env"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "client_secret").write_text("from-credential")
    env["CREDENTIALS_DIRECTORY"] = str(creds)
    source = load_config(path, env).haas.client_secret
    assert source.load().reveal() == "from-credential"
    assert source.describe() == "systemd credential 'client_secret'"


def test_secret_file_readable_by_others_is_refused_with_the_fix(tmp_path: Path) -> None:
    secret_file = tmp_path / "store.key"
    secret_file.write_text("key-material")
    secret_file.chmod(0o644)
    path = write(tmp_path, MINIMAL + '[store]\nkey_file = "store.key"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, {}).store.key.load()
    assert "readable by group or others" in info.value.reason
    assert f"chmod 600 {secret_file}" in info.value.reason
    assert "key-material" not in str(info.value)


def test_missing_secret_says_where_to_put_it(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), {})
    with pytest.raises(ConfigError) as info:
        config.store.key.load()
    assert "HAASD_STORE_KEY" in info.value.reason


def test_systemd_directories_give_default_paths(tmp_path: Path) -> None:
    env = {"STATE_DIRECTORY": "/var/lib/haasd", "RUNTIME_DIRECTORY": "/run/haasd"}
    config = load_config(write(tmp_path, MINIMAL), env)
    assert config.store.path == Path("/var/lib/haasd/haasd.db")
    assert config.socket.path == Path("/run/haasd/haasd.sock")


def test_access_rule_by_names(tmp_path: Path) -> None:
    import grp
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    text = MINIMAL + f'[[access]]\nuser = "{user}"\ngroup = "{group}"\nhumans = ["usr_*"]\n'
    rule = load_config(write(tmp_path, text), {}).access[0]
    assert (rule.uid, rule.gid, rule.admin, rule.scopes) == (os.getuid(), os.getgid(), False, None)


def test_consent_section(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '[consent]\npending_ttl = "5m"\nmax_pending = 10\n')
    config = load_config(path, {})
    assert (config.consent.pending_ttl, config.consent.max_pending) == (300.0, 10)
    assert load_config(write(tmp_path, MINIMAL), {}).consent.pending_ttl == 900.0


# --- [store]: a PostgreSQL url instead of a SQLite path ------------------------------------

PG_URL = "postgresql://haasd@db.example.com:5432/haasd"
LIVE = MINIMAL.replace('environment = "test"', 'environment = "live"').replace(
    'client_secret = "s3cret-for-tests"\n', ""
)


def store_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {})
    assert info.value.file == str(path)
    return info.value


def test_a_sqlite_path_is_still_the_default(tmp_path: Path) -> None:
    store = load_config(write(tmp_path, MINIMAL), {}).store
    assert (store.url, store.password) == (None, None)
    assert store.describe() == str(store.path)


def test_a_postgresql_url_names_the_store(tmp_path: Path) -> None:
    store = load_config(write(tmp_path, LIVE + f'[store]\nurl = "{PG_URL}"\n'), {}).store
    assert store.url == PG_URL
    assert store.password is not None
    assert store.password.load_optional() is None  # a server with peer or cert auth
    assert store.describe() == f"{PG_URL} (PostgreSQL, no password)"


def test_the_url_may_come_from_the_environment(tmp_path: Path) -> None:
    store = load_config(write(tmp_path, LIVE), {"HAASD_STORE_URL": PG_URL}).store
    assert store.url == PG_URL


def test_the_database_password_comes_like_every_secret(tmp_path: Path) -> None:
    secret = tmp_path / "store.password"
    secret.write_text("from-file\n")
    secret.chmod(0o600)
    text = LIVE + f'[store]\nurl = "{PG_URL}"\npassword_file = "store.password"\n'
    path = write(tmp_path, text)

    def password(env: dict[str, str]) -> str:
        source = load_config(path, env).store.password
        assert source is not None
        loaded = source.load_optional()
        assert loaded is not None
        return loaded.reveal()

    assert password({}) == "from-file"
    env = {"HAASD_STORE_PASSWORD": "from-env"}
    assert password(env) == "from-env"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "store.password").write_text("from-credential")
    env["CREDENTIALS_DIRECTORY"] = str(creds)
    assert password(env) == "from-credential"
    described = load_config(path, env).store.describe()
    assert described == f"{PG_URL} (PostgreSQL, password from systemd credential 'store.password')"


def test_a_password_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "store.password"
    secret.write_text("hunter2-db")
    secret.chmod(0o640)
    text = LIVE + f'[store]\nurl = "{PG_URL}"\npassword_file = "store.password"\n'
    source = load_config(write(tmp_path, text), {}).store.password
    assert source is not None
    with pytest.raises(ConfigError) as info:
        source.load_optional()
    assert info.value.key == "store.password_file"
    assert f"chmod 600 {secret}" in info.value.reason
    assert "hunter2-db" not in str(info.value)


def test_path_and_url_together_are_refused(tmp_path: Path) -> None:
    error = store_error(tmp_path, MINIMAL + f'[store]\npath = "haasd.db"\nurl = "{PG_URL}"\n')
    assert error.key == "store.url"
    assert "store.path is set too" in error.reason and "give one of them" in error.reason


def test_path_in_the_file_and_url_in_the_environment_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '[store]\npath = "haasd.db"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, {"HAASD_STORE_URL": PG_URL})
    assert info.value.file == "environment variable HAASD_STORE_URL"
    assert info.value.key == "store.url"
    assert "store.path is set too" in info.value.reason


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://haasd@db/haasd", "expected a postgresql:// URL"),
        ("postgres://haasd@db/haasd", "expected a postgresql:// URL"),
        ("/var/lib/haasd/haasd.db", "for a SQLite file, set store.path instead"),
        ("postgresql://haasd@db:54x2/haasd", "port is not a number from 1 to 65535"),
        ("postgresql://haasd@db:70000/haasd", "port is not a number from 1 to 65535"),
        ("postgresql://haasd@db:0/haasd", "port is not a number from 1 to 65535"),
        ("postgresql://haasd@db/haasd#x", "no #fragment"),
        ("", "expected a non-empty string"),
    ],
)
def test_a_url_that_is_not_postgresql_is_refused(tmp_path: Path, url: str, reason: str) -> None:
    error = store_error(tmp_path, MINIMAL + f'[store]\nurl = "{url}"\n')
    assert error.key == "store.url"
    assert reason in error.reason


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://haasd@/haasd?host=/run/postgresql",
        "postgresql://haasd@[::1]:5433/haasd",
        "postgresql://haasd@db1:5432,db2:5432/haasd?target_session_attrs=read-write",
        "postgresql:///haasd",
    ],
)
def test_libpq_url_forms_are_accepted(tmp_path: Path, url: str) -> None:
    assert load_config(write(tmp_path, LIVE + f'[store]\nurl = "{url}"\n'), {}).store.url == url


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://haasd:hunter2-db@db.example.com:5432/haasd",
        "postgresql://haasd@db.example.com:5432/haasd?password=hunter2-db",
    ],
)
def test_a_password_inline_in_the_url_is_refused_in_live_mode(tmp_path: Path, url: str) -> None:
    error = store_error(tmp_path, LIVE + f'[store]\nurl = "{url}"\n')
    assert error.key == "store.url"
    assert 'only when haas.environment = "test"' in error.reason
    assert "HAASD_STORE_PASSWORD" in error.reason and "store.password_file" in error.reason
    assert "hunter2-db" not in str(error)


@pytest.mark.parametrize(
    ("url", "without"),
    [
        (
            "postgresql://haasd:hunter%402-db@db.example.com:5432/haasd",
            "postgresql://haasd@db.example.com:5432/haasd",
        ),
        (
            "postgresql://haasd@/haasd?host=/run/postgresql&password=hunter@2-db",
            "postgresql://haasd@/haasd?host=/run/postgresql",
        ),
        ("postgresql:///haasd?password=hunter@2-db", "postgresql:///haasd"),
    ],
)
def test_a_password_inline_in_test_mode_leaves_the_url(
    tmp_path: Path, url: str, without: str
) -> None:
    config = load_config(write(tmp_path, MINIMAL + f'[store]\nurl = "{url}"\n'), {})
    assert config.store.url == without
    assert config.store.password is not None
    loaded = config.store.password.load_optional()
    assert loaded is not None and loaded.reveal() == "hunter@2-db"
    assert config.store.describe().endswith("password from inline in the config file)")
    assert "hunter" not in repr(config)


def test_a_password_file_without_a_url_is_refused(tmp_path: Path) -> None:
    error = store_error(tmp_path, MINIMAL + '[store]\npassword_file = "store.password"\n')
    assert error.key == "store.password_file"
    assert "for a PostgreSQL store (store.url)" in error.reason


def test_the_password_variable_is_a_secret_not_a_key(tmp_path: Path) -> None:
    """``HAASD_STORE_PASSWORD`` is read as a secret, never refused as an unknown key."""
    config = load_config(write(tmp_path, MINIMAL), {"HAASD_STORE_PASSWORD": "x"})
    assert config.store.url is None


@pytest.fixture
def pg_config_file(tmp_path: Path) -> Path:
    """A test-mode config whose store is PostgreSQL, with a key and a 0600 password file."""
    from haasd.cli import main

    assert main(["keygen", "--out", str(tmp_path / "store.key")]) == 0
    password = tmp_path / "store.password"
    password.write_text("hunter2-db\n")
    password.chmod(0o600)
    store = f'[store]\nurl = "{PG_URL}"\nkey_file = "store.key"\npassword_file = "store.password"\n'
    return write(tmp_path, MINIMAL + store)


def test_check_config_accepts_a_postgresql_store(
    pg_config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from haasd.cli import main

    assert main(["check-config", "--config", str(pg_config_file)]) == 0
    out = capsys.readouterr().out
    password_file = pg_config_file.parent / "store.password"
    assert f"store            {PG_URL} (PostgreSQL, password from file {password_file})" in out
    assert "hunter2-db" not in out


def test_check_config_refuses_an_open_password_file(
    pg_config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from haasd.cli import main

    (pg_config_file.parent / "store.password").chmod(0o644)
    assert main(["check-config", "--config", str(pg_config_file)]) == 2
    err = capsys.readouterr().err
    assert "store.password_file: secret file is readable by group or others" in err
    assert "hunter2-db" not in err


def test_connect_timeout_and_lease_have_defaults_and_bounds(tmp_path: Path) -> None:
    base = LIVE + f'[store]\nurl = "{PG_URL}"\n'
    config = load_config(write(tmp_path, base), {})
    assert (config.store.connect_timeout, config.cluster.lease) == (20.0, 15.0)
    text = base + 'connect_timeout = "1m"\n[cluster]\nlease = "10s"\n'
    config = load_config(write(tmp_path, text), {})
    assert (config.store.connect_timeout, config.cluster.lease) == (60.0, 10.0)
    assert load_config(write(tmp_path, base), {"HAASD_CLUSTER_LEASE": "5"}).cluster.lease == 5.0
    for lease in ('"2s"', '"6m"'):
        error = store_error(tmp_path, base + f"[cluster]\nlease = {lease}\n")
        assert error.key == "cluster.lease"
        assert "must be between 3s and 5m" in error.reason


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("connect_timeout = 5\n", "store.connect_timeout"),
        ('[cluster]\nlease = "10s"\n', "cluster.lease"),
    ],
)
def test_postgresql_only_keys_are_refused_for_sqlite(tmp_path: Path, text: str, key: str) -> None:
    error = store_error(tmp_path, MINIMAL + '[store]\npath = "haasd.db"\n' + text)
    assert error.key == key
    assert "PostgreSQL store (store.url)" in error.reason
