"""A haasd engine in a child process that dies at a chosen point of a refresh.

Run by tests/test_crash.py: ``python crash_child.py STORE TOKEN_URL HUMAN POINT`` with
the store key in $HAASD_STORE_KEY. POINT is "answered" (the server answered; nothing
written yet) or "written" (the new tokens are on disk; nobody was served yet). The
process then dies the hard way, with no cleanup, as a power cut or a SIGKILL would.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio

from haasd.authclient import AuthClient
from haasd.clock import SystemClock
from haasd.crypto import Key, Sealer
from haasd.events import EventBus
from haasd.grants import Policy
from haasd.ratelimit import RateBudget
from haasd.refresher import Refresher
from haasd.secret import Secret
from haasd.store import Store

CLIENT_ID = "app_test_client"
CLIENT_SECRET = "test-client-secret-value"


async def main(store_path: str, token_url: str, human_id: str, point: str) -> None:
    clock = SystemClock()

    def checkpoint(where: str, human: str) -> None:
        if where == point and human == human_id:
            os._exit(137)

    budget = RateBudget(300, clock)
    sealer = Sealer(Key.from_text(os.environ["HAASD_STORE_KEY"]))
    async with (
        await Store.open(Path(store_path), sealer) as store,
        AuthClient(
            token_url=token_url,
            client_id=CLIENT_ID,
            client_secret=Secret(CLIENT_SECRET),
            budget=budget,
        ) as auth,
        anyio.create_task_group() as tg,
    ):
        refresher = Refresher(
            store=store,
            auth=auth,
            clock=clock,
            policy=Policy(),
            events=EventBus(),
            budget=budget,
            checkpoint=checkpoint,
        )
        await tg.start(refresher.run)
        await refresher.refresh_now(human_id)
        print("refreshed without crashing", flush=True)
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    store_path, token_url, human_id, point = sys.argv[1:5]
    anyio.run(main, store_path, token_url, human_id, point)
