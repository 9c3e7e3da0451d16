"""Text from elsewhere, made safe to show on a terminal: :func:`printable`.

What haasd prints or logs may come from the HaaS server (a scope, an error description)
or from a store it wrote. An ANSI escape there must show up as ``\\x1b``, never clear
the screen or forge a line, and a lone surrogate as ``\\ud800``, never an encoding
error that stops the program.
"""

from __future__ import annotations

import unicodedata
from typing import Final

__all__ = ["printable"]

#: the Unicode categories shown escaped: controls (ANSI escapes among them), surrogates,
#: invisible format characters (bidi overrides), private use and unassigned code points
_HIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cs", "Cf", "Co", "Cn"})


def printable(text: object, *, keep: str = "") -> str:
    """``str(text)`` with every control or invisible character as a Python escape
    (``\\x1b``, ``\\n``, ``\\ud800``, ``\\u202e``), except those in ``keep``.

    Everything else, spaces, backslashes and non-ASCII letters included, is left as
    it is: ordinary text reads the same.
    """
    return "".join(
        ascii(ch)[1:-1] if ch not in keep and unicodedata.category(ch) in _HIDDEN_CATEGORIES else ch
        for ch in str(text)
    )
