"""Server-sent text in a log line: shown escaped on the console, as in JSON lines; a lone
surrogate never stops logging with an encoding error."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from haasd.logs import configure_logging

HOSTILE = "refused: \x1b[2J\ud800\u202e"


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_a_hostile_error_text_is_logged_escaped_in_either_format(fmt: str) -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
    configure_logging("info", fmt, stream=stream)
    log = structlog.get_logger()
    log.warning(f"refresh failed {HOSTILE}", error=HOSTILE, scopes=[HOSTILE], human="u\x1b")
    written = raw.getvalue()
    assert b"\x1b" not in written and "\u202e".encode() not in written
    text = written.decode("ascii")
    if fmt == "json":
        assert json.loads(text)["error"] == HOSTILE  # JSON escapes it and keeps it whole
    else:
        assert "refresh failed refused: \\x1b[2J\\ud800\\u202e" in text
        assert "human='u\\x1b'" in text  # no space: quoted only because it needs it
        assert "error='refused: \\x1b[2J\\ud800\\u202e'" in text


def test_a_traceback_keeps_its_lines_on_the_console() -> None:
    stream = io.StringIO()
    configure_logging("info", "console", stream=stream)
    try:
        raise RuntimeError("boom \x1b[31m")
    except RuntimeError:
        structlog.get_logger().exception("failed")
    output = stream.getvalue()
    assert "Traceback (most recent call last):\n" in output
    assert "RuntimeError: boom \\x1b[31m" in output and "\x1b" not in output
