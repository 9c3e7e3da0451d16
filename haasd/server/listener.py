"""The token socket: created safely, or inherited from systemd.

:func:`bind_socket` creates the Unix socket at the configured path:

* the parent directory is created ``0750`` when missing (an existing one is left as is);
* the socket never exists at the path with any mode but the configured one (see
  :func:`bind_socket`), and the process umask is never touched (it is process-wide, so
  changing it around ``bind`` would race with any other thread creating files);
* a socket file left by a crashed run (nobody answers on it) is replaced;
* a socket a live process answers on is refused — another haasd is running;
* a symlink, or anything that is not a socket, at the path is refused and never unlinked;
* abstract-namespace names (a leading NUL, or ``@``) are refused: they have no permissions.

With systemd socket activation (``LISTEN_FDS`` and ``LISTEN_PID`` naming this process),
:func:`open_listener` uses the inherited descriptor 3 instead and leaves its path alone.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import anyio
import anyio.abc
import structlog

from haasd.config import SocketConfig
from haasd.errors import HaasdError

__all__ = [
    "SocketInUseError",
    "SocketPathError",
    "UnixListener",
    "bind_socket",
    "inherited_socket",
    "open_listener",
]

_log = structlog.get_logger("haasd.server")

#: sun_path holds 108 bytes on Linux, the terminating NUL included
_MAX_PATH: Final = 107
_SD_LISTEN_FDS_START: Final = 3
_PROBE_TIMEOUT: Final = 1.0
#: the socket's name in its private directory while it is made
_TEMP_NAME: Final = "s"


class SocketPathError(HaasdError):
    """The socket cannot be created at the configured path; the message says why."""


class SocketInUseError(SocketPathError):
    """A live process answers on the socket path: another haasd is running."""


def bind_socket(path: Path, mode: int = 0o660, *, backlog: int = socket.SOMAXCONN) -> socket.socket:
    """A listening, non-blocking Unix socket at ``path`` with exactly ``mode``.

    Linux gives a new socket file the mode of the socket's own inode less the umask, and
    ``fchmod`` on a bound socket changes only that inode, never the file. So the file is
    made where nobody else can reach it and moved into place finished:

    1. ``fchmod`` on the unbound socket: the file is born with at most ``mode``;
    2. ``bind`` inside a fresh ``0700`` directory next to ``path``, held by a descriptor
       (the bind goes through ``/proc/self/fd/N/``, so a rename of that directory cannot
       send it elsewhere, and the temporary name never meets the 108-byte limit);
    3. ``chmod`` there to exactly ``mode`` (relative to the held descriptor: no other user
       can put anything in that directory);
    4. ``link`` the file to ``path``, which fails if anything appeared there meanwhile.

    At ``path`` there is either nothing or the finished socket.
    """
    text = os.fspath(path)
    if not text or text.startswith(("\0", "@")):
        raise SocketPathError(f"{text!r}: abstract-namespace sockets are not supported")
    if len(os.fsencode(text)) > _MAX_PATH:
        raise SocketPathError(f"{text}: longer than the {_MAX_PATH} bytes a socket path may have")
    _ensure_parent(path.parent)
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.fchmod(sock.fileno(), mode)
        _bind_privately(sock, path, mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, errno.EEXIST):
            raise SocketInUseError(
                f"{text}: another process created the socket meanwhile; is another haasd starting?"
            ) from exc
        raise SocketPathError(f"{text}: cannot create the socket: {exc.strerror}") from exc
    return sock


def _bind_privately(sock: socket.socket, path: Path, mode: int) -> None:
    """Bind ``sock`` in a private directory, set ``mode``, link it to ``path`` (above)."""
    private = tempfile.mkdtemp(prefix=".haasd-", dir=path.parent)
    fd = os.open(private, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    bound = False
    try:
        os.fchmod(fd, 0o700)  # mkdtemp's 0700 less the umask could be narrower: be exact
        try:
            sock.bind(f"/proc/self/fd/{fd}/{_TEMP_NAME}")
        except FileNotFoundError:  # no /proc: the directory's own path, if it fits
            fallback = os.path.join(private, _TEMP_NAME)
            if len(os.fsencode(fallback)) > _MAX_PATH:
                raise
            sock.bind(fallback)
        bound = True
        os.chmod(_TEMP_NAME, mode, dir_fd=fd)
        os.link(_TEMP_NAME, path, src_dir_fd=fd)
    finally:
        if bound:
            os.unlink(_TEMP_NAME, dir_fd=fd)
        os.close(fd)
        os.rmdir(private)


def _ensure_parent(parent: Path) -> None:
    try:
        parent.mkdir(mode=0o750)
    except FileExistsError:
        if not parent.is_dir():
            raise SocketPathError(f"{parent}: exists and is not a directory") from None
        return
    except FileNotFoundError:
        parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise SocketPathError(f"{parent}: cannot create the directory: {exc.strerror}") from exc
    os.chmod(parent, 0o750)  # noqa: S103 - mkdir's mode passes through the umask


def _clear_stale(path: Path) -> None:
    """Remove a socket file nobody answers on; refuse anything else at ``path``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SocketPathError(f"{path}: cannot inspect: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise SocketPathError(f"{path}: is a symbolic link; refusing to use or remove it")
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathError(f"{path}: exists and is not a socket; refusing to use or remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_PROBE_TIMEOUT)
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listens: left by a run that did not clean up
    except OSError as exc:
        raise SocketPathError(f"{path}: cannot tell whether it is in use: {exc}") from exc
    else:
        raise SocketInUseError(
            f"{path}: another haasd is running (a process answers on this socket); "
            "stop it first, or configure another socket path"
        )
    finally:
        probe.close()
    _log.info("replacing a stale socket", path=os.fspath(path))
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def inherited_socket(environ: Mapping[str, str]) -> socket.socket | None:
    """The listening socket systemd passed (``LISTEN_FDS``), or None when not activated."""
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        raise SocketPathError("LISTEN_FDS is not a number") from None
    if count < 1:
        return None
    if count > 1:
        _log.warning("systemd passed several sockets; using the first", listen_fds=count)
    sock = socket.socket(fileno=_SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise SocketPathError("the socket systemd passed is not a Unix stream socket")
    sock.setblocking(False)
    return sock


class UnixListener(anyio.abc.SocketListener):
    """An anyio listener that, when it created its socket file, removes it on close."""

    def __init__(self, inner: anyio.abc.SocketListener, path: Path | None) -> None:
        self._inner = inner
        self._path = path
        self._identity: tuple[int, int] | None = None
        if path is not None:
            st = os.stat(path)
            self._identity = (st.st_dev, st.st_ino)

    @property
    def path(self) -> Path | None:
        """The socket file this listener created (None when inherited)."""
        return self._path

    async def accept(self) -> anyio.abc.SocketStream:
        return await self._inner.accept()

    async def aclose(self) -> None:
        await self._inner.aclose()
        if self._path is not None and self._identity is not None:
            try:
                st = os.lstat(self._path)
            except FileNotFoundError:
                return
            if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == self._identity:
                os.unlink(self._path)  # ours: never another process's socket
            self._identity = None

    @property
    def _raw_socket(self) -> socket.socket:
        raw: socket.socket = self._inner.extra(anyio.abc.SocketAttribute.raw_socket)  # noqa: S610
        return raw


async def open_listener(
    config: SocketConfig, *, environ: Mapping[str, str] | None = None
) -> UnixListener:
    """The listener to serve on: systemd's socket if activated, else a new one at the path."""
    env = os.environ if environ is None else environ
    inherited = inherited_socket(env)
    if inherited is not None:
        _log.info("using the socket systemd passed", path=os.fspath(config.path))
        return UnixListener(await anyio.abc.SocketListener.from_socket(inherited), None)
    sock = bind_socket(config.path, config.mode)
    try:
        inner = await anyio.abc.SocketListener.from_socket(sock)
    except BaseException:
        sock.close()
        raise
    return UnixListener(inner, config.path)
