"""Refusal and error lines, counted per peer so a flood of them writes a handful.

A peer that sends 20,000 forbidden requests would otherwise write 20,000 lines, and
journald's rate limit would then drop the lines that matter (the audit of tokens served).
So refusals and errors (``access.denied``, ``connection refused``, ``request.rejected``,
``server.handler_failed``) go through a :class:`Tally`, as the audit of handouts goes
through :class:`haasd.server.answers.AuditLedger`:

* the first line for a (peer uid, event) in a window of ``Limits.refusal_window`` seconds
  is written at once, with ``count`` 1;
* repeats within the window are only counted; one line with their ``count`` (and the
  details of the latest) is written when the window has ended — the server's watchdog
  calls :meth:`Tally.flush` on every tick, so no entry needs a timer of its own — or when
  the server stops;
* the sum of ``count`` over the lines is every refusal.

Memory is bounded: at most ``max_entries`` (peer, event) pairs are tracked at once; peers
beyond that share one entry per event, whose lines say ``peer_uid: "other"``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

__all__ = ["Tally"]

#: (peer, event) pairs tracked at once; beyond that, peers share an entry per event
MAX_ENTRIES: Final = 256
_OTHER: Final = "other"


class _Entry:
    __slots__ = ("fields", "level", "log", "pending", "started")

    def __init__(self, log: Any, level: str, started: float, fields: dict[str, Any]) -> None:
        self.log = log
        self.level = level
        self.started = started
        self.pending = 0
        self.fields = fields


class Tally:
    """Counts repeated refusal and error lines per peer and event (see the module)."""

    __slots__ = ("_clock", "_entries", "_max", "_window")

    def __init__(
        self,
        window: float,
        *,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window
        self._max = max_entries
        self._clock = clock
        self._entries: dict[tuple[int | str, str], _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def note(self, log: Any, level: str, event: str, uid: int, **fields: Any) -> None:
        """One refusal or error by the peer ``uid``: a line now, or a count for later.

        ``log`` is a structlog logger and ``level`` its method (``"warning"``, ...);
        ``exc_info=True`` in ``fields`` is honoured on the line written at once only.
        """
        now = self._clock()
        key: tuple[int | str, str] = (uid, event)
        entry = self._entries.get(key)
        if entry is None and len(self._entries) >= self._max:
            key = (_OTHER, event)
            entry = self._entries.get(key)
        exc_info = fields.pop("exc_info", False)
        if entry is not None:
            if now - entry.started < self._window:
                entry.pending += 1
                entry.fields = fields
                return
            self._write(key, entry)  # its window ended before a flush came by
        self._entries[key] = _Entry(log, level, now, fields)
        line = self._line(key, fields, 1)
        if exc_info:
            line["exc_info"] = exc_info
        getattr(log, level)(event, **line)

    def flush(self, now: float | None = None) -> None:
        """Write the counts of windows that have ended by ``now`` (all, when None)."""
        entries = self._entries
        if not entries:
            return
        if now is None:
            ended = list(entries)
        else:
            window = self._window
            ended = [key for key, entry in entries.items() if now - entry.started >= window]
        for key in ended:
            self._write(key, entries.pop(key))

    def _write(self, key: tuple[int | str, str], entry: _Entry) -> None:
        if entry.pending:
            line = self._line(key, entry.fields, entry.pending)
            getattr(entry.log, entry.level)(key[1], **line)
            entry.pending = 0

    @staticmethod
    def _line(key: tuple[int | str, str], fields: dict[str, Any], count: int) -> dict[str, Any]:
        uid = key[0]
        if uid == _OTHER:  # the latest peer's details would misattribute the others
            fields = {k: v for k, v in fields.items() if not k.startswith("peer_")}
        return {**fields, "peer_uid": uid, "count": count}
