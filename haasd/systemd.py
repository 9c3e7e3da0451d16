"""systemd integration without a dependency: sd_notify and the watchdog.

``sd_notify`` is a datagram to the socket in ``$NOTIFY_SOCKET`` (a path, or an abstract
name starting with ``@``). Outside systemd it is a no-op. The watchdog pings from the
event loop itself at half of ``$WATCHDOG_USEC``, so a wedged loop stops the pings and
systemd restarts the service.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import anyio
import structlog

__all__ = ["Notifier", "watchdog_interval"]

_log = structlog.get_logger("haasd.systemd")


class Notifier:
    """Sends ``READY=1``, ``STATUS=…``, ``WATCHDOG=1`` and ``STOPPING=1`` to systemd."""

    __slots__ = ("_address",)

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        if address is not None and address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (e.g. "READY=1", "STATUS=…"); False outside systemd or on error."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall("\n".join(fields).encode())
        except OSError as exc:
            _log.warning("sd_notify failed", error=str(exc))
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1", "STATUS=stopping")

    async def watchdog(self, interval: float) -> None:
        """Ping ``WATCHDOG=1`` every ``interval`` seconds of real time, forever."""
        while True:
            self.notify("WATCHDOG=1")
            await anyio.sleep(interval)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, if the watchdog is on for this process."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2_000_000
