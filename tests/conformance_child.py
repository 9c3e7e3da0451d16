"""A writer that dies mid-way, for the conformance suite (tests/test_conformance.py).

``python conformance_child.py WHAT HUMAN...``, with the backend named in the environment
(see tests/conformance_backends.py). WHAT is

* ``intent``: record a refresh intent for the first HUMAN, then die, as a daemon killed
  while its refresh token is on the wire would;
* ``mid-write``: replace the grants of every HUMAN in one write and die after its
  statements ran, before it commits.

The process dies the hard way (``os._exit``), with no cleanup, as a SIGKILL would.
"""

from __future__ import annotations

import os
import sys

import anyio
from conformance_backends import BACKEND_VARIABLE, FROM_ENV
from factories import T0, make_grant

from haasd.grants import RefreshIntent

INTENT = RefreshIntent("attempt-crashed", "fp-crashed", T0 + 60)


async def main(what: str, humans: list[str]) -> None:
    backend = FROM_ENV[os.environ[BACKEND_VARIABLE]]()
    store = await backend.open()
    if what == "intent":
        await store.begin_refresh(humans[0], INTENT)
    elif what == "mid-write":
        backend.die_before_commit()
        await store.put_grants([make_grant(h, last_error="never committed") for h in humans])
    print(f"{what}: the write returned", flush=True)
    os._exit(137)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2:])
