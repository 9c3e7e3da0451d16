"""``HAASD_ACCESS`` replaces every ``[[access]]`` rule of the config file: ``haasd run``
says so at start-up, as an operator reading its log sees it."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from support import socket_dir
from support_daemon import write_config

RULES = """
[[access]]
uid = 1000
humans = ["usr_*"]
[[access]]
uid = 1001
humans = ["usr_maria_42"]
"""


@pytest.fixture
def directory() -> Iterator[Path]:
    path = Path(socket_dir())  # the socket's path must fit AF_UNIX's 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def started_log(config: Path, env: dict[str, str]) -> list[dict[str, object]]:
    """The JSON log lines of ``haasd run --config CONFIG`` up to "haasd ready"; then it
    is stopped."""
    argv = [sys.executable, "-m", "haasd", "run", "--config", str(config)]
    keep = {k: v for k, v in os.environ.items() if not k.startswith("HAASD_")}
    lines: list[dict[str, object]] = []
    async with await anyio.open_process(argv, env=keep | env) as proc:
        assert proc.stderr is not None
        buffered = b""
        with anyio.fail_after(30):
            async for chunk in proc.stderr:
                buffered += chunk
                *done, buffered = buffered.split(b"\n")
                lines += [json.loads(line) for line in done if line]
                if any(line["event"] == "haasd ready" for line in lines):
                    break
            proc.terminate()
            await proc.wait()
    return lines


async def test_haasd_run_warns_when_haasd_access_replaces_the_files_rules(
    directory: Path,
) -> None:
    # the token endpoint is never reached: no grant is stored, nothing is refreshed
    config = write_config(directory, "http://127.0.0.1:9/token", extra=RULES)
    access = json.dumps([{"uid": os.geteuid(), "humans": ["usr_*"], "admin": True}])
    lines = await started_log(config, {"HAASD_ACCESS": access})
    warnings = [line for line in lines if line["level"] == "warning"]
    note = f"HAASD_ACCESS replaces the 2 [[access]] rule(s) of {config}"
    assert [note] == [line["event"] for line in warnings]


async def test_haasd_run_says_nothing_of_it_when_the_file_rules_stand(directory: Path) -> None:
    config = write_config(directory, "http://127.0.0.1:9/token", extra=RULES)
    lines = await started_log(config, {})
    assert [line for line in lines if "HAASD_ACCESS" in str(line["event"])] == []
