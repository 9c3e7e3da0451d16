"""`haasd demo`, the README's first command, shows the whole life cycle and cleans up."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def test_the_demo_shows_every_moment_and_cleans_up() -> None:
    # a temp dir of its own (short: the demo's socket path must fit AF_UNIX's 108 bytes)
    tmp = Path(tempfile.mkdtemp(prefix="hd", dir="/tmp"))
    result = subprocess.run(
        [sys.executable, "-m", "haasd", "demo", "--speed", "720", "--duration", "33"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "NO_COLOR": "1", "TMPDIR": str(tmp)},
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for moment in (
        "CONSENTED   usr_maria_42",  # one approves
        "DENIED      usr_bob_3",  # one denies
        "ABANDONED",  # one never answers
        "honoured    no request to HaaS",  # a 429 honoured
        "HaaS turns flaky",  # a flaky moment ...
        "refreshed   usr_dave_7",  # ... survived: refreshes go on
        "FLAGGED     usr_maria_42",  # reconsent_due
        "RE-CONSENT  usr_maria_42",  # and a re-consent
        "LIMIT       usr_dave_7",  # a refresh-token limit reached
        "409 needs_reconsent",  # and its token refused once it ended
        "tokens served to the app",
        "least time-to-expiry served",
    ):
        assert moment in out, f"{moment!r} missing from the demo's output:\n{out}"
    served = next(line for line in out.splitlines() if "tokens served to the app" in line)
    assert int(served.split()[-1]) > 10
    assert list(tmp.iterdir()) == [], "the demo removed its store, key and socket"
    tmp.rmdir()
