"""Serving while the daemon starts: the socket answers before every grant is loaded.

Loading 100,000 grants takes a second or two; apps should not wait for it. Until the
daemon calls :meth:`TokenServer.started <haasd.server.TokenServer.started>`:

* a token request for a human not in memory yet is judged on that human's stored row,
  read alone (:meth:`TokenService.peek`), under the same rules, scopes and margins as
  any other: served if its token has the time asked for, 409 if it needs consent again;
* anything else about it — a refresh to make, a human the store does not have, a row
  that does not open — waits until the daemon has started, within the request's own
  ``wait``, and is then answered as usual;
* every other route (statuses, listings, health, metrics, consents) waits likewise, so
  none answers from a half-loaded memory. Only the event stream opens at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import anyio

from haasd.errors import HaasdError
from haasd.server.answers import Problem, TokenQuery, unavailable, unknown
from haasd.server.http import Takeover
from haasd.server.humans import WAIT_SLACK

if TYPE_CHECKING:
    from haasd.server.access import Decision
    from haasd.server.routes import PeerContext

__all__ = ["Starting", "after_start", "token_while_starting"]

#: the reason of a 503 answered while the grants are still loading
LOADING: Final = "haasd is still loading its grants"


class Starting:
    """Set once the daemon has started: every grant in memory, every part running."""

    __slots__ = ("_done",)

    def __init__(self) -> None:
        self._done = anyio.Event()

    def done(self) -> None:
        self._done.set()

    async def wait(self, seconds: float) -> bool:
        """True once started; False if ``seconds`` passed first."""
        with anyio.move_on_after(seconds):
            await self._done.wait()
        return self._done.is_set()


async def token_while_starting(
    context: PeerContext, starting: Starting, human_id: str, asked: TokenQuery,
    decision: Decision,
) -> bytes:  # fmt: skip
    """``GET /v1/tokens/{human_id}`` while starting (see the module)."""
    router = context.router
    try:
        try:
            grant = await router.service.peek(human_id)
        except HaasdError:  # the store cannot answer now: as for any other, wait for the start
            grant = None
        if grant is not None and (answer := context.answer_in_hand(grant, asked, decision)):
            return answer
        if not await starting.wait(asked.wait + WAIT_SLACK):
            raise unavailable(LOADING, 1.0)
        grant = router.service.grant(human_id)
        if grant is None:
            router.forget(human_id)
            raise unknown(human_id)
        answer = context.answer_in_hand(grant, asked, decision)
        return answer or await context.token_later(human_id, asked, decision)
    except Problem as problem:
        router.outcomes[problem.outcome] += 1
        return problem.answer()


async def after_start(
    context: PeerContext, starting: Starting, method: bytes, path: bytes, query: bytes,
    body: bytes,
) -> bytes:  # fmt: skip
    """Any route but tokens and events, answered once the daemon has started."""
    try:
        if not await starting.wait(context.router.limits.handler_timeout / 2):
            raise unavailable(LOADING, 1.0)
        answer = context.route(method, path, query, body)
    except Problem as problem:
        return problem.answer()
    if isinstance(answer, Takeover):  # pragma: no cover - the event stream never waits
        raise TypeError("a stream's takeover cannot wait for the start")
    return answer if isinstance(answer, bytes) else await answer
