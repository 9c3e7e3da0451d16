"""The simulated server's endpoints: each request to its route, faults around ``/token``."""

from __future__ import annotations

import anyio

from haasd.clock import Clock
from haasd.simulator._authority import Authority
from haasd.simulator._faults import Drop, Fail, FaultScript, Malformed, malformed_reply
from haasd.simulator._messages import Reply, Request, json_reply
from haasd.simulator._stats import SimulatorStats, TokenRequestRecord
from haasd.simulator._tokenrequest import parse_token_request

__all__ = ["Endpoints"]


class Endpoints:
    """Routes requests to the :class:`Authority`, applying the :class:`FaultScript` and
    counting in :class:`SimulatorStats`; every ``/token`` request goes into ``log``."""

    __slots__ = ("_authority", "_clock", "_faults", "_log", "_stats")

    def __init__(
        self,
        authority: Authority,
        faults: FaultScript,
        clock: Clock,
        stats: SimulatorStats,
        log: list[TokenRequestRecord],
    ) -> None:
        self._authority = authority
        self._faults = faults
        self._clock = clock
        self._stats = stats
        self._log = log

    async def handle(self, request: Request) -> Reply | None:
        """The reply to one request; None: the connection closes without one."""
        self._stats.requests += 1
        reply: Reply | None
        match request.path:
            case "/token":
                reply = await self._token(request)
            case "/revoke" if request.method == "POST":
                parsed = parse_token_request(request.headers, request.body)
                reply = self._authority.revocation(parsed, self._clock.time())
            case "/revoke":
                reply = json_reply(405, {"error": "method_not_allowed"}, (("Allow", "POST"),))
            case "/authorize" if request.method == "GET":
                self._stats.authorize_requests += 1
                reply = self._authority.authorize(request.query, self._clock.time())
            case "/health" if request.method in ("GET", "HEAD"):
                reply = json_reply(200, {"status": "ok"})
            case "/authorize" | "/health":
                reply = json_reply(405, {"error": "method_not_allowed"}, (("Allow", "GET"),))
            case _:
                reply = json_reply(404, {"error": "not_found"})
        if reply is not None:
            self._stats.statuses[reply.status] += 1
        return reply

    async def _token(self, request: Request) -> Reply | None:
        """``/token``: the scripted fault in front of the authority, or behind it."""
        if request.method != "POST":
            return json_reply(405, {"error": "method_not_allowed"}, (("Allow", "POST"),))
        parsed = parse_token_request(request.headers, request.body)
        grant_type = parsed.params.get("grant_type")
        human_id = self._authority.human_for(parsed)
        self._stats.token_requests[grant_type or ""] += 1
        if self._faults.latency:
            await anyio.sleep(self._faults.latency)
        now = self._clock.time()
        fault = self._faults.next()
        reply: Reply | None
        match fault:
            case Drop(after_processing=False):
                reply = None
            case Fail(reply=reply):
                self._stats.injected += 1
            case Malformed(kind=kind, after_processing=False):
                reply = malformed_reply(kind, None)
                self._stats.injected += 1
            case _:
                processed = self._authority.token(parsed, now)
                human_id = processed.human_id or human_id
                reply = processed
                match fault:
                    case Drop():
                        reply = None
                    case Malformed(kind=kind):
                        rate = tuple(h for h in processed.headers if h[0].startswith("X-RateLimit"))
                        reply = malformed_reply(kind, processed).with_headers(rate)
                        self._stats.injected += 1
        if reply is None:
            self._stats.dropped += 1
        record = TokenRequestRecord(
            now, grant_type, human_id, None if reply is None else reply.status
        )
        self._log.append(record)
        return reply
