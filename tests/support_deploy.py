"""What the deployment tests share: the Containerfile and compose files as data, the
image's environment, container paths re-rooted under a test's directory, secret files and
a seeded store."""

from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from haasd.crypto import Key, Sealer
from haasd.grants import Policy, new_grant
from haasd.simulator import Simulator
from haasd.store import Store
from haasd.tokens import parse_token_response

REPO = Path(__file__).resolve().parents[1]
SERVICE = REPO / "systemd" / "haasd.service"
SOCKET = REPO / "systemd" / "haasd.socket"
SYSUSERS = REPO / "systemd" / "haasd.sysusers"
CONTAINERFILE = REPO / "Containerfile"
COMPOSE = REPO / "docs" / "compose.example.yaml"
CONFIG_EXAMPLE = REPO / "config.example.toml"
#: where the service unit expects haasd (a virtualenv); tests point it at this one
UNIT_EXEC = "/opt/haasd/bin/haasd"
#: the container paths the entrypoint test re-roots under a temporary directory
CONTAINER_PATHS = ("/run/haasd", "/var/lib/haasd", "/run/secrets")
#: the highest `systemd-analyze security` exposure the service may have (it has 1.2)
MAX_EXPOSURE = 2.0
HUMAN = "usr_maria_42"


# --- reading the files ---------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` → every value assigned, in order (systemd's list semantics)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a Key=Value line: {raw!r}"
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def one(settings: Mapping[str, list[str]], key: str) -> str:
    values = settings.get(key)
    assert values is not None, f"{key} is not set"
    return values[-1]


@dataclass(frozen=True)
class Instruction:
    stage: int  # 0 for the first FROM's stage, 1 for the next, ...
    keyword: str
    args: str


def containerfile() -> list[Instruction]:
    """The Containerfile's instructions, continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in CONTAINERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(stage, keyword, args.strip()))
    return out


def final_stage() -> list[Instruction]:
    instructions = containerfile()
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def image_env() -> dict[str, str]:
    """The final image's ENV, as the container starts with it (``$PATH`` left out)."""
    env: dict[str, str] = {}
    for instruction in final_stage():
        if instruction.keyword != "ENV":
            continue
        for word in shlex.split(instruction.args):
            name, sep, value = word.partition("=")
            assert sep, f"ENV {word!r}: use the NAME=value form"
            if name != "PATH":
                env[name] = value
    return env


def exec_form(instruction: str) -> list[str]:
    """The JSON (exec-form) command of an ENTRYPOINT or HEALTHCHECK ... CMD."""
    args = [i.args for i in final_stage() if i.keyword == instruction]
    assert len(args) == 1, f"expected one {instruction} in the final stage"
    text = args[0]
    if instruction == "HEALTHCHECK":
        assert " CMD " in f" {text}", "HEALTHCHECK needs a CMD"
        text = text.split("CMD", 1)[1]
    command = json.loads(text)
    assert isinstance(command, list) and all(isinstance(a, str) for a in command)
    return command


def compose_service_env(service: str) -> dict[str, str]:
    """``environment:`` of one service in the compose example (a mapping of plain scalars)."""
    env: dict[str, str] = {}
    current = None
    in_env = False
    for raw in COMPOSE.read_text(encoding="utf-8").splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        indent = len(raw) - len(raw.lstrip())
        if indent == 2 and raw.rstrip().endswith(":"):
            current, in_env = raw.strip()[:-1], False
            continue
        if current != service:
            continue
        if indent == 4:
            in_env = raw.strip() == "environment:"
            continue
        if in_env and indent == 6:
            name, _, value = raw.strip().partition(":")
            value = value.strip()
            if value[:1] in ("'", '"'):
                value = value[1:-1]
            env[name] = value
    assert env, f"no environment for {service!r} in {COMPOSE.name}"
    return env


def rerooted(value: str, root: Path) -> str:
    for prefix in CONTAINER_PATHS:
        if value == prefix or value.startswith(prefix + "/"):
            return str(root / value.lstrip("/"))
    return value


def python_m(command: list[str]) -> list[str]:
    """``haasd ...`` as this test's interpreter runs it (the image has haasd on $PATH)."""
    assert command[0] == "haasd"
    return [sys.executable, "-m", "haasd", *command[1:]]


def has_health_command() -> bool:
    probe = subprocess.run(
        [sys.executable, "-m", "haasd", "health", "--help"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def write_secret(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.chmod(path, mode)


async def seed_grant(store_path: Path, key: Key, sim: Simulator) -> str:
    """A human consents through the simulator; the grant is stored as `haasd import` does."""
    answer = parse_token_response(await sim.consent(HUMAN))
    async with await Store.open(store_path, Sealer(key)) as store:
        grant = new_grant(answer, "test", sim.clock.time(), Policy(), random.Random(1))
        await store.put_grant(grant)
    return answer.access_token.reveal()
