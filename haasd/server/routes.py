"""The token service's routes: each request in, one answer out.

==========================================  =======================  =========================
route                                       who                      answer
==========================================  =======================  =========================
``GET /v1/health``                          any peer with a rule     200 health
``GET /v1/tokens/{human_id}``               peers allowed the human  200 token
``GET /v1/humans``                          admin                    200 ``{"humans": [...]}``
``GET /v1/humans/{human_id}``               peers allowed the human  200 status
``POST /v1/humans/{human_id}/refresh``      admin                    200 status / 502 / 409
``DELETE /v1/humans/{human_id}``            admin                    204
``GET /v1/events``                          anyone with a rule       ``text/event-stream``
``GET /metrics``                            admin                    Prometheus text
``/v1/consents``, ``…/callback``            admin                    see :mod:`.consents`
==========================================  =======================  =========================

``GET /v1/events`` streams the events about the humans a peer's rules cover (and those
about nobody); ``consent.*`` events go to admins only — for the human they name, or to
any admin while the human is not known yet (a consent started without ``human_id``).

A token whose grant in memory has the time asked for is answered without an await (the
bodies of the humans served most recently are kept encoded, only ``expires_in`` changes:
:mod:`haasd.server.bodies`); only otherwise is the refresh engine awaited. Refusals
are audited as ``access.denied``; every token handed out as ``token.served`` (see
:mod:`haasd.server.answers`).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final

import anyio
import structlog

from haasd.config import AccessRule
from haasd.errors import (
    HaasdError,
    NeedsReconsentError,
    TokenUnavailableError,
    UnknownHumanError,
)
from haasd.grants import Grant, Serve, serve_decision, state_at
from haasd.server.access import (
    Decision,
    Peer,
    decide_for,
    effective_rules,
    is_admin,
    may_see,
    rules_for,
)
from haasd.server.answers import (
    PLAIN,
    AuditLedger,
    Problem,
    TokenQuery,
    check_ceiling,
    check_method,
    check_scope,
    parse_human_id,
    parse_query,
    parse_token_query,
    parse_wait,
    reconsent,
    unavailable,
    unknown,
)
from haasd.server.bodies import TokenBodies
from haasd.server.consents import CONSENTS, ConsentRoutes
from haasd.server.http import Limits, Takeover, json_response
from haasd.server.humans import (
    WAIT_SLACK,
    delete_answer,
    humans_answer,
    refresh_answer,
    status_answer,
)
from haasd.server.service import TokenService
from haasd.server.starting import Starting, after_start, token_while_starting
from haasd.server.stream import subscribe
from haasd.server.tally import Tally

if TYPE_CHECKING:
    from haasd.consent import ConsentFlow

__all__ = ["PeerContext", "Router"]

_audit = structlog.get_logger("haasd.audit")
_TOKENS: Final = b"/v1/tokens/"
_TOKENS_LEN: Final = len(_TOKENS)
_SERVE: Final = Serve.SERVE
_RECONSENT: Final = Serve.NEEDS_RECONSENT
_HUMANS: Final = b"/v1/humans/"
_REFRESH: Final = b"/refresh"
_DECISION_CACHE: Final = 64
_ANY_SCOPE: Final = (None,)


class Router:
    """Routes for every connection; :meth:`connect` gives one peer's handler."""

    __slots__ = (
        "_daemon_uid",
        "_pattern",
        "_rules",
        "bodies",
        "consents",
        "generation",
        "limits",
        "metrics",
        "monotonic",
        "outcomes",
        "served",
        "service",
        "starting",
        "tally",
    )

    def __init__(
        self,
        service: TokenService,
        rules: Sequence[AccessRule],
        *,
        daemon_uid: int,
        limits: Limits,
        human_id_pattern: re.Pattern[str],
        metrics: Callable[[], bytes],
        consents: ConsentFlow | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        starting: Starting | None = None,
    ) -> None:
        self.service = service
        #: set while the daemon starts (see :mod:`haasd.server.starting`); then None
        self.starting = starting
        self.limits = limits
        #: the server's clock for log windows (real seconds)
        self.monotonic = monotonic
        self._daemon_uid = daemon_uid
        self._pattern = human_id_pattern
        self._rules = effective_rules(rules, daemon_uid)
        #: token answers encoded once per token, for the humans served most recently
        self.bodies = TokenBodies(limits.cached_answers)
        #: bumped on every rule change, so connections re-match their peer
        self.generation = 0
        #: tokens served, and the other outcomes of token requests, for /metrics
        self.served = 0
        self.outcomes: Counter[str] = Counter()
        #: renders the whole ``GET /metrics`` answer
        self.metrics = metrics
        self.consents = ConsentRoutes(consents, service, limits, human_id_pattern)
        #: refusal and error lines, counted per peer (see :mod:`haasd.server.tally`)
        self.tally = Tally(limits.refusal_window, clock=monotonic)

    def started(self) -> None:
        """The daemon has started: requests waiting for it go on; no more wait."""
        if self.starting is not None:
            self.starting.done()
            self.starting = None

    def update_rules(self, rules: Sequence[AccessRule]) -> None:
        self._rules = effective_rules(rules, self._daemon_uid)
        self.generation += 1

    def match(self, peer: Peer) -> tuple[AccessRule, ...]:
        return rules_for(self._rules, peer)

    def connect(self, peer: Peer) -> PeerContext:
        return PeerContext(self, peer)

    def human_id(self, raw: bytes) -> str:
        return parse_human_id(raw, self._pattern)

    def forget(self, human_id: str) -> None:
        self.bodies.forget(human_id)


class PeerContext:
    """One connection's view: its peer, the rules that match it, its audit logger."""

    __slots__ = ("_decisions", "_generation", "_ledger", "_matched", "peer", "router")

    def __init__(self, router: Router, peer: Peer) -> None:
        self.router = router
        self.peer = peer
        self._generation = router.generation
        self._matched = router.match(peer)
        self._decisions: dict[tuple[str, frozenset[str]], Decision] = {}
        audit = _audit.bind(peer_uid=peer.uid, peer_pid=peer.pid)
        self._ledger = AuditLedger(audit, router.limits.audit_window, monotonic=router.monotonic)

    def close(self) -> None:
        """The connection ended: write the audit lines still pending."""
        self._ledger.close()

    @property
    def matched(self) -> tuple[AccessRule, ...]:
        if self._generation != self.router.generation:
            self._generation = self.router.generation
            self._matched = self.router.match(self.peer)
            self._decisions.clear()
        return self._matched

    def handle(
        self, method: bytes, target: bytes, body: bytes = b""
    ) -> bytes | Awaitable[bytes] | Takeover:
        """The answer to one request (see the module's table)."""
        path, _, query = target.partition(b"?")
        if path.startswith(_TOKENS) and method == b"GET":
            try:
                return self._token(path[_TOKENS_LEN:], query)
            except Problem as problem:
                self.router.outcomes[problem.outcome] += 1
                return problem.answer()
        if (starting := self.router.starting) is not None and path != b"/v1/events":
            return after_start(self, starting, method, path, query, body)
        try:
            return self.route(method, path, query, body)
        except Problem as problem:
            return problem.answer()

    def route(
        self, method: bytes, path: bytes, query: bytes, body: bytes
    ) -> bytes | Awaitable[bytes] | Takeover:
        """Any route but a token's ``GET`` (see the module's table)."""
        if path.startswith(_TOKENS):
            check_method(method, b"GET")  # a GET went the fast way, in handle()
        if path == b"/v1/health":
            check_method(method, b"GET")
            return json_response(200, self.router.service.health().to_json())
        if path.startswith(_HUMANS):
            rest = path[len(_HUMANS) :]
            if rest.endswith(_REFRESH):
                check_method(method, b"POST")
                human_id = self.router.human_id(rest[: -len(_REFRESH)])
                self._need_admin(human_id)  # before the coroutine: it answers, not raises
                wait = parse_wait(parse_query(query, ("wait",)).get("wait", "30"))
                return refresh_answer(self.router.service, human_id, wait, self.peer.uid)
            human_id = self.router.human_id(rest)
            if method == b"DELETE":
                self._need_admin(human_id)
                return self._delete(human_id)
            check_method(method, b"GET", b"DELETE")
            return self._status(human_id)
        if path == b"/v1/humans":
            check_method(method, b"GET")
            return self._humans()
        if path == b"/v1/events":
            check_method(method, b"GET")
            return self._events()
        if path == b"/metrics":
            check_method(method, b"GET")
            self._need_admin(None)
            return self.router.metrics()
        if path.startswith(CONSENTS):
            rules, peer_uid = (lambda: self.matched), self.peer.uid
            return self.router.consents.handle(method, path, body, peer_uid, rules, self._deny)
        raise Problem(404, "not_found", "no such route; see GET /v1/health")

    # --- access ---------------------------------------------------------------------------

    def _decide(self, human_id: str, scopes: frozenset[str]) -> Decision:
        matched = self.matched
        key = (human_id, scopes)
        decision = self._decisions.get(key)
        if decision is None:
            if len(self._decisions) >= _DECISION_CACHE:
                self._decisions.clear()
            decision = self._decisions[key] = decide_for(matched, human_id, scopes=scopes)
        return decision

    def _deny(self, human_id: str | None, reason: str, route: str) -> Problem:
        peer = self.peer
        self.router.tally.note(
            _audit,
            "warning",
            "access.denied",
            peer.uid,
            peer_gid=peer.gid,
            peer_pid=peer.pid,
            human_id=human_id,
            route=route,
            reason=reason,
        )
        return Problem(403, "forbidden", reason, outcome="forbidden")

    def _need_admin(self, human_id: str | None) -> None:
        if not is_admin(self.matched, human_id):
            raise self._deny(human_id, "an admin [[access]] rule is needed", "admin")

    def _need_human(self, human_id: str) -> None:
        if not may_see(self.matched, human_id):
            reason = f"no [[access]] rule for this peer covers human {human_id!r}"
            raise self._deny(human_id, reason, "status")

    # --- tokens ---------------------------------------------------------------------------

    def _token(self, raw_id: bytes, query: bytes) -> bytes | Awaitable[bytes]:
        router = self.router
        human_id = router.human_id(raw_id)
        asked = parse_token_query(query, router.limits.max_min_ttl) if query else PLAIN
        decision = self._decide(human_id, asked.scopes)
        if not decision.allowed:
            raise self._deny(human_id, decision.reason, "token")
        grant = router.service.grant(human_id)
        if grant is None:
            if (starting := router.starting) is not None:  # loading: judged on its row
                return token_while_starting(self, starting, human_id, asked, decision)
            router.forget(human_id)
            raise unknown(human_id)
        answer = self.answer_in_hand(grant, asked, decision)
        return answer or self.token_later(human_id, asked, decision)

    def answer_in_hand(self, grant: Grant, asked: TokenQuery, decision: Decision) -> bytes | None:
        """The token answer from ``grant`` as it is, or None if a refresh must come first;
        raises the :class:`Problem` of a scope not granted or a grant needing consent."""
        self._check_scopes(grant, decision)
        service = self.router.service
        now = service.clock.time()
        policy = service.policy
        state = state_at(grant.state, grant.refresh_expires_at, now, policy)
        serve = serve_decision(
            state, grant.access_expires_at, now, asked.min_ttl, policy.serve_margin
        )
        if serve is _SERVE:
            service.mark_served(grant, now)
            return self._serve(grant, now)
        if serve is _RECONSENT:
            raise reconsent(grant.human_id, grant.last_error)
        return None

    @staticmethod
    def _check_scopes(grant: Grant, decision: Decision) -> None:
        if decision.required:
            check_scope(grant, decision.required)
        if decision.ceilings != _ANY_SCOPE:
            check_ceiling(grant, decision)

    async def token_later(self, human_id: str, asked: TokenQuery, decision: Decision) -> bytes:
        """The slow path: the engine must refresh first (sharing any refresh in flight),
        within ``asked.wait`` seconds."""
        service = self.router.service
        try:
            try:
                with anyio.fail_after(asked.wait + WAIT_SLACK):
                    grant = await service.ensure_fresh(
                        human_id, float(asked.min_ttl), wait=asked.wait, peer=self.peer.uid
                    )
            except UnknownHumanError:
                raise unknown(human_id) from None
            except NeedsReconsentError as exc:
                raise reconsent(human_id, exc.reason) from None
            except TokenUnavailableError as exc:
                raise unavailable(exc.reason, exc.retry_after) from None
            except TimeoutError:
                raise unavailable("timed out waiting for a refresh", 1.0) from None
            except HaasdError as exc:
                raise unavailable(str(exc), service.policy.backoff_base) from None
            self._check_scopes(grant, decision)
            now = service.clock.time()
            if grant.access_expires_at - now <= asked.min_ttl + service.policy.serve_margin:
                # never an expired, dying or too-short token
                raise unavailable("no token with the time asked for", service.policy.backoff_base)
            return self._serve(grant, now)
        except Problem as problem:
            self.router.outcomes[problem.outcome] += 1
            return problem.answer()

    def _serve(self, grant: Grant, now: float) -> bytes:
        router = self.router
        body = router.bodies.body(grant)
        router.served += 1
        self._ledger.served(grant.human_id, body)
        return body.answer(int(grant.access_expires_at - now))

    # --- humans ---------------------------------------------------------------------------

    def _status(self, human_id: str) -> bytes:
        self._need_human(human_id)
        return status_answer(self.router.service, human_id)

    def _humans(self) -> bytes:
        self._need_admin(None)
        return humans_answer(self.router.service, self.matched)

    async def _delete(self, human_id: str) -> bytes:
        self.router.forget(human_id)
        return await delete_answer(self.router.service, human_id, self.peer.uid)

    # --- events ---------------------------------------------------------------------------

    def _events(self) -> Takeover:
        if not self.matched:
            raise self._deny(None, "no [[access]] rule matches this peer's uid/gid", "events")
        router, matched = self.router, lambda: self.matched
        return subscribe(router.service.events, router.limits, matched)
