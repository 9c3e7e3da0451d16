"""``haasd ... | head -1``: a reader that closes standard output early ends the command
quietly, with exit code 141 (128 + SIGPIPE) as any Unix tool, never a traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest
from support import FakeService, make_grant, serving
from support_daemon import cli_env, daemon_running

from haasd.cli import main
from haasd.cli._common import EXIT_CLOSED_OUTPUT, is_closed_output


async def into_closed_pipe(*args: str) -> tuple[int, str]:
    """(exit code, stderr) of ``python -m haasd ARGS`` writing to a pipe nobody reads."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line: every write fails
    try:
        argv = [sys.executable, "-m", "haasd", *args]
        done = await anyio.run_process(argv, stdout=write_end, env=cli_env(), check=False)
    finally:
        os.close(write_end)
    return done.returncode, done.stderr.decode()


async def test_consent_start_into_a_closed_pipe_exits_141_without_a_traceback(
    workdir: Path,
) -> None:
    async with daemon_running(workdir) as api:
        api.sim.queue_human("usr_pipe_1")
        code, err = await into_closed_pipe("consent", "start", "--socket", api.socket)
    assert (code, err) == (141, "")


@pytest.mark.parametrize("args", [("status",), ("health",)])
async def test_any_command_into_a_closed_pipe_exits_141_without_a_traceback(
    args: tuple[str, ...],
) -> None:
    async with serving(FakeService([make_grant(f"usr_{i}_1") for i in range(50)])) as s:
        code, err = await into_closed_pipe(*args, "--socket", s.path)
    assert (code, err) == (EXIT_CLOSED_OUTPUT, "")


async def test_a_command_whose_output_is_read_is_unchanged(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with serving() as s:
        code = await anyio.to_thread.run_sync(main, ["health", "--socket", s.path])
    assert (code, capsys.readouterr().out) == (0, "haasd is ok\n")


def test_only_a_broken_pipe_counts_as_a_closed_output() -> None:
    assert is_closed_output(BrokenPipeError())
    assert is_closed_output(ExceptionGroup("in a task group", [BrokenPipeError()]))
    assert not is_closed_output(ExceptionGroup("mixed", [BrokenPipeError(), ValueError()]))
    assert not is_closed_output(ConnectionResetError())
