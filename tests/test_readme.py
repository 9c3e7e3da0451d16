"""The README's reference sections match the code they describe."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from haasd.cli import build_parser
from haasd.config import known_keys
from haasd.events import EVENT_TYPES

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_config_reference_lists_every_key_and_only_those() -> None:
    sections = {key.split(".")[0] for key in known_keys()}
    rows = re.findall(r"^\| `([a-z_]+)\.([a-z_]+)` \|", README, flags=re.MULTILINE)
    documented = [f"{section}.{key}" for section, key in rows if section in sections]
    assert sorted(documented) == sorted(known_keys())
    assert len(documented) == len(set(documented))


def test_every_event_type_is_documented() -> None:
    for event in EVENT_TYPES:
        assert f"`{event}`" in README, event


def test_every_command_in_the_cli_is_documented() -> None:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = list(sub.choices)
    assert len(commands) >= 9
    for command in commands:
        assert f"haasd {command}" in README, command


def test_the_two_commands_exist() -> None:
    root = Path(__file__).resolve().parent.parent
    for script in ("./.ci/demo", "./.ci/test"):
        assert f"{script} " in README
        assert (root / script).stat().st_mode & 0o111, f"{script} is executable"
