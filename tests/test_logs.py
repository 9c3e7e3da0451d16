"""Nothing token- or secret-shaped reaches the log output, wherever it hides."""

from __future__ import annotations

import io
import json

import structlog

from haasd.logs import REDACTED, Redact, configure_logging, redact_text
from haasd.secret import Secret

AT = "haas_at_Kj7mNq2xPvL8abcdef"
RT = "haas_rt_Xm9pQw4zRtY2abcdef"
LIVE = "haas_live_sk_EXAMPLEnotAkey0001"
TEST = "haas_test_sk_EXAMPLEnotAkey0002"


def test_redact_text_keeps_prefix_drops_secret() -> None:
    text = f"got {AT} and {RT}; key {LIVE} / {TEST}; Authorization: Bearer abcdefgh12345678"
    out = redact_text(text)
    for secret in (AT, RT, LIVE, TEST, "abcdefgh12345678"):
        assert secret not in out
    assert f"haas_at_{REDACTED}" in out and f"haas_live_{REDACTED}" in out


def test_processor_scrubs_fields_nested_values_and_names() -> None:
    event = {
        "event": f"refreshed {AT}",
        "access_token": "opaque-value-not-shaped-like-a-token",
        "client_secret": "hunter2hunter2",
        "details": {"refresh_token": "zzz", "note": [RT, {"x": LIVE}]},
        "token_type": "Bearer",
        "key_id": "0123abcd",
        "human_id": "usr_maria_42",
        "failures": 3,
    }
    out = Redact()(None, "info", event)
    dumped = json.dumps(out)
    for secret in (AT, RT, LIVE, "opaque-value-not-shaped", "hunter2hunter2", "zzz"):
        assert secret not in dumped
    assert out["token_type"] == "Bearer"
    assert out["key_id"] == "0123abcd"
    assert out["human_id"] == "usr_maria_42"
    assert out["failures"] == 3


def test_json_log_line_from_an_exception_carries_no_token() -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    log = structlog.get_logger()
    try:
        raise RuntimeError(f"server echoed {RT}")
    except RuntimeError:
        log.exception("refresh crashed", secret=Secret(AT), token=AT)
    log.debug("plain", human_id="usr_a")
    output = stream.getvalue()
    lines = [json.loads(line) for line in output.splitlines()]
    assert lines[0]["event"] == "refresh crashed" and lines[1]["human_id"] == "usr_a"
    assert AT not in output and RT not in output
    assert "RuntimeError" in output


def test_console_format_and_level_filter() -> None:
    stream = io.StringIO()
    configure_logging("warning", "console", stream=stream)
    log = structlog.get_logger()
    log.info("hidden")
    log.warning("shown", token=AT)
    output = stream.getvalue()
    assert "shown" in output and "hidden" not in output and AT not in output
