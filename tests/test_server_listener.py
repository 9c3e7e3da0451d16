"""Creating the token socket: modes, stale and live sockets, things that are not sockets,
and systemd socket activation."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from support import socket_dir

from haasd.config import SocketConfig
from haasd.server import SocketInUseError, SocketPathError, bind_socket, open_listener
from haasd.server.listener import inherited_socket


@pytest.fixture
def where() -> Iterator[Path]:
    directory = Path(socket_dir())
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("mode", [0o660, 0o600, 0o640])
async def test_the_socket_has_exactly_the_configured_mode(where: Path, mode: int) -> None:
    path = where / "s.sock"
    listener = await open_listener(SocketConfig(path, mode), environ={})
    try:
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert mode == mode_of(path)
    finally:
        await listener.aclose()
    assert not path.exists()


async def test_the_umask_is_restored_after_binding(where: Path) -> None:
    before = os.umask(0o022)
    try:
        sock = bind_socket(where / "s.sock", 0o600)
        sock.close()
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(before)


def _umask_now() -> int:
    """The process umask as the kernel reports it, read without changing it."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("Umask:"))
    return int(line.split()[1], 8)


def test_binding_never_touches_the_process_umask_another_thread_relies_on(where: Path) -> None:
    """The umask is process-wide: a thread creating a file meanwhile would get it too."""
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.add(_umask_now())

    before = os.umask(0o022)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(100):  # the old umask-around-bind was seen in a few dozen
            bind_socket(where / "s.sock", 0o600).close()
            os.unlink(where / "s.sock")
    finally:
        done.set()
        watcher.join()
        os.umask(before)
    assert {0o022} == seen


def test_the_socket_path_never_shows_another_mode(where: Path) -> None:
    """Watched from another thread while sockets are made again and again, the path holds
    either nothing or a socket with the configured mode, even under a narrow umask."""
    path = where / "s.sock"
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                seen.add(os.lstat(path).st_mode)
            except FileNotFoundError:
                pass

    before = os.umask(0o077)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(30):
            bind_socket(path, 0o660).close()
            os.unlink(path)
    finally:
        done.set()
        watcher.join()
        os.umask(before)
    assert {stat.S_IFSOCK | 0o660} == seen
    assert os.listdir(where) == []  # nothing left behind by the making


async def test_a_socket_at_the_longest_path_has_its_mode_and_answers(where: Path) -> None:
    path = where / ("x" * (107 - len(os.fsencode(where)) - 1))
    assert len(os.fsencode(path)) == 107
    listener = await open_listener(SocketConfig(path, 0o600), environ={})
    try:
        assert mode_of(path) == 0o600
        async with await anyio.connect_unix(path):
            pass
    finally:
        await listener.aclose()
    assert os.listdir(where) == []


async def test_a_missing_directory_is_created_0750(where: Path) -> None:
    path = where / "run" / "haasd" / "s.sock"
    listener = await open_listener(SocketConfig(path), environ={})
    await listener.aclose()
    assert mode_of(path.parent) == 0o750


async def test_a_stale_socket_from_a_crashed_run_is_replaced(where: Path) -> None:
    path = where / "s.sock"
    crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    crashed.bind(str(path))
    crashed.close()  # the file stays; nobody listens
    listener = await open_listener(SocketConfig(path), environ={})
    try:
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        async with await anyio.connect_unix(path):
            pass  # the new socket answers
        assert mode_of(path) == 0o660
    finally:
        await listener.aclose()


async def test_a_socket_a_live_process_answers_on_is_not_replaced(where: Path) -> None:
    path = where / "s.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    live.listen()
    try:
        with pytest.raises(SocketInUseError, match="another haasd is running"):
            await open_listener(SocketConfig(path), environ={})
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(path))  # still the live process's socket
    finally:
        live.close()


async def test_a_symlink_is_refused_and_left_alone(where: Path) -> None:
    target = where / "elsewhere"
    target.write_text("keep me")
    path = where / "s.sock"
    path.symlink_to(target)
    with pytest.raises(SocketPathError, match="symbolic link"):
        await open_listener(SocketConfig(path), environ={})
    assert path.is_symlink() and target.read_text() == "keep me"


async def test_a_regular_file_is_refused_and_left_alone(where: Path) -> None:
    path = where / "s.sock"
    path.write_text("not a socket")
    with pytest.raises(SocketPathError, match="not a socket"):
        await open_listener(SocketConfig(path), environ={})
    assert path.read_text() == "not a socket"


async def test_a_directory_is_refused(where: Path) -> None:
    path = where / "s.sock"
    path.mkdir()
    with pytest.raises(SocketPathError, match="not a socket"):
        await open_listener(SocketConfig(path), environ={})
    assert path.is_dir()


@pytest.mark.parametrize("name", ["\0haasd", "@haasd"])
def test_abstract_names_are_refused(name: str) -> None:
    with pytest.raises(SocketPathError, match="abstract"):
        bind_socket(Path(name))


def test_a_path_too_long_for_a_socket_is_refused(where: Path) -> None:
    with pytest.raises(SocketPathError, match="longer than"):
        bind_socket(where / ("x" * 120))


def test_a_parent_that_is_a_file_is_refused(where: Path) -> None:
    (where / "file").write_text("")
    with pytest.raises(SocketPathError, match="not a directory"):
        bind_socket(where / "file" / "s.sock")


async def test_closing_leaves_a_socket_that_replaced_ours_alone(where: Path) -> None:
    path = where / "s.sock"
    listener = await open_listener(SocketConfig(path), environ={})
    os.unlink(path)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    try:
        await listener.aclose()
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        other.close()


def test_without_systemd_nothing_is_inherited() -> None:
    assert inherited_socket({}) is None
    assert inherited_socket({"LISTEN_PID": "1", "LISTEN_FDS": "1"}) is None
    assert inherited_socket({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"}) is None
    with pytest.raises(SocketPathError, match="LISTEN_FDS"):
        inherited_socket({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "x"})


_ACTIVATED_CHILD = textwrap.dedent(
    """
    import os, sys, anyio
    from pathlib import Path
    from haasd.config import SocketConfig
    from haasd.server import open_listener

    os.dup2(int(sys.argv[1]), 3)
    os.close(int(sys.argv[1]))
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"}

    async def main():
        listener = await open_listener(SocketConfig(Path(sys.argv[2])), environ=env)
        async with listener, await listener.accept() as stream:
            await stream.send(b"activated")
        print("path kept" if Path(sys.argv[2]).exists() else "path removed")

    anyio.run(main)
    """
)


async def test_systemd_socket_activation_uses_the_inherited_socket(where: Path) -> None:
    path = where / "s.sock"
    sock = bind_socket(path, 0o660)  # systemd's part: it creates and binds the socket
    try:
        async with await anyio.open_process(
            [sys.executable, "-c", _ACTIVATED_CHILD, str(sock.fileno()), str(path)],
            pass_fds=(sock.fileno(),),
        ) as child:
            sock.close()
            async with await anyio.connect_unix(path) as client:
                with anyio.fail_after(20):
                    assert await client.receive() == b"activated"
            with anyio.fail_after(20):
                await child.wait()
            assert child.stdout is not None
            output = (await child.stdout.receive()).decode()
    finally:
        sock.close()
    assert (child.returncode, output.strip().splitlines()[-1]) == (0, "path kept")
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
