"""A value that never shows itself by accident.

``repr``, ``str``, f-strings, logging and pickling of a :class:`Secret` all refuse to
reveal it; the one way out is :meth:`Secret.reveal`, which is easy to grep for.
"""

from __future__ import annotations

import hmac
from typing import Any, Final, NoReturn, final

__all__ = ["Secret"]

_MASK: Final = "**********"


@final
class Secret:
    """A string secret: a client secret, an access or a refresh token."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret holds a str")
        self._value = value

    def reveal(self) -> str:
        """The secret itself. Call only where it must leave the process (HTTP, AES)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({_MASK!r})"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return _MASK

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled")

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self
