"""Who may ask for what: pure decisions over the peer's uid/gid and the ``[[access]]`` rules.

No I/O here. The server reads the peer's credentials once, at accept (``SO_PEERCRED``),
and asks these functions; pids are carried for the audit trail only, never decided on
(they are reused).

Rules, as ``config.example.toml`` documents them:

* A rule matches a peer when every id it names matches: ``uid`` (if given) is the peer's
  uid and ``gid`` (if given) is the peer's primary gid (``SO_PEERCRED``) or one of its
  supplementary groups (``SO_PEERGROUPS``) — so "members of haasd-clients" works.
* Without any rule at all, uid 0 and the daemon's own uid match an implicit admin rule for
  every human.
* A rule grants the humans its globs match (``fnmatch``, case-sensitive). With ``scopes``
  it grants only requests for scopes among them, and only tokens that carry no scope
  beyond them (least privilege: a ``status:read`` rule never hands out a token that can
  dispatch tasks; a narrower token needs a consent for fewer scopes).
* ``admin`` rules may list and manage the humans they match, and read ``/metrics``.
  Several rules may match one peer; a request is allowed when any of them allows it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Final

from haasd.config import AccessRule

__all__ = [
    "Decision",
    "Peer",
    "covers_everyone",
    "decide",
    "decide_for",
    "default_rules",
    "effective_rules",
    "excess_scopes",
    "glob_covers_every_human",
    "human_matches",
    "is_admin",
    "may_see",
    "rules_for",
]


@dataclass(frozen=True, slots=True)
class Peer:
    """The process at the other end of a connection, as the kernel vouches for it."""

    uid: int
    gid: int
    pid: int
    #: supplementary groups (``SO_PEERGROUPS``), so a member of a clients group matches
    groups: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to "may this peer have this?"; ``reason`` says why not, for the audit."""

    allowed: bool
    #: scopes the grant must hold for the request to be served (those asked for)
    required: frozenset[str] = frozenset()
    reason: str = ""
    #: the scope sets of the rules that allow it (None: any scope); a token is served
    #: only when every scope it carries lies within one of them (:func:`excess_scopes`)
    ceilings: tuple[frozenset[str] | None, ...] = (None,)


_EVERYONE: Final = ("*",)
_NO_RULE: Final = "no [[access]] rule matches this peer's uid/gid"


def default_rules(daemon_uid: int) -> tuple[AccessRule, ...]:
    """The rules in force when the configuration has none: root and the daemon's user."""
    uids = dict.fromkeys((0, daemon_uid))
    return tuple(AccessRule(uid, None, _EVERYONE, None, True) for uid in uids)


def effective_rules(rules: Sequence[AccessRule], daemon_uid: int) -> tuple[AccessRule, ...]:
    """``rules``, or :func:`default_rules` when there are none."""
    return tuple(rules) if rules else default_rules(daemon_uid)


def rules_for(rules: Iterable[AccessRule], peer: Peer) -> tuple[AccessRule, ...]:
    """The rules that match ``peer``: every id a rule names must be the peer's."""
    return tuple(
        rule
        for rule in rules
        if (rule.uid is None or rule.uid == peer.uid)
        and (rule.gid is None or rule.gid == peer.gid or rule.gid in peer.groups)
        and (rule.uid is not None or rule.gid is not None)
    )


def human_matches(rule: AccessRule, human_id: str) -> bool:
    return any(fnmatchcase(human_id, glob) for glob in rule.humans)


def may_see(matched: Iterable[AccessRule], human_id: str) -> bool:
    """May a peer with these rules see this human at all (status, events)?"""
    return any(human_matches(rule, human_id) for rule in matched)


def is_admin(matched: Iterable[AccessRule], human_id: str | None = None) -> bool:
    """Is a peer with these rules an admin (for ``human_id``, when one is named)?"""
    return any(
        rule.admin and (human_id is None or human_matches(rule, human_id)) for rule in matched
    )


def decide_for(
    matched: Sequence[AccessRule],
    human_id: str,
    *,
    need_admin: bool = False,
    scopes: frozenset[str] = frozenset(),
) -> Decision:
    """Decide for a peer whose matching rules are ``matched`` (see :func:`rules_for`).

    ``scopes`` are the scopes asked for: each must be within a rule's ``scopes``. The
    token served must then also carry no scope beyond that rule's (:func:`excess_scopes`).
    """
    if not matched:
        return Decision(False, reason=_NO_RULE)
    ceilings: list[frozenset[str] | None] = []
    reason = f"no [[access]] rule for this peer covers human {human_id!r}"
    for rule in matched:
        if not human_matches(rule, human_id):
            continue
        if need_admin and not rule.admin:
            reason = f"an admin rule is needed for human {human_id!r}"
            continue
        ceiling = None if rule.scopes is None else frozenset(rule.scopes)
        if ceiling is not None and not scopes <= ceiling:
            extra = " ".join(sorted(scopes - ceiling))
            reason = f"the [[access]] rules do not allow scope {extra!r} for this peer"
            continue
        ceilings.append(ceiling)
    if not ceilings:
        return Decision(False, reason=reason)
    if None in ceilings:
        return Decision(True, scopes)
    return Decision(True, scopes, ceilings=tuple(dict.fromkeys(ceilings)))


def excess_scopes(decision: Decision, carried: Iterable[str]) -> frozenset[str]:
    """The scopes a token carrying ``carried`` has beyond every rule that allowed the
    request — empty when one rule covers them all (least privilege: a peer gets no
    token that can do more than its rule says)."""
    held = frozenset(carried)
    best: frozenset[str] | None = None
    for ceiling in decision.ceilings:
        if ceiling is None:
            return frozenset()
        extra = held - ceiling
        if best is None or len(extra) < len(best):
            best = extra
    return best or frozenset()


def decide(
    rules: Sequence[AccessRule],
    peer: Peer,
    human_id: str,
    *,
    daemon_uid: int,
    need_admin: bool = False,
    scopes: frozenset[str] = frozenset(),
) -> Decision:
    """May ``peer`` have ``human_id``'s piece (or manage the human, with ``need_admin``)?"""
    matched = rules_for(effective_rules(rules, daemon_uid), peer)
    return decide_for(matched, human_id, need_admin=need_admin, scopes=scopes)


#: what a human id is made of (``haasd.tokens.HUMAN_ID_RE``: ``usr_`` and 1 to 64 of these)
_HUMAN_PREFIX: Final = "usr_"
_HUMAN_CHARS: Final = "abcdefghijklmnopqrstuvwxyz0123456789_"
_HUMAN_MAX: Final = len(_HUMAN_PREFIX) + 64
#: a glob piece: "*", or the characters (of a human id's) that one position matches
_Piece = str | frozenset[str]


def _glob_pieces(glob: str) -> tuple[_Piece, ...]:
    """``glob`` as fnmatch reads it: ``*`` or, per position, the human-id characters it
    matches (a ``[...]`` class is asked of fnmatch itself, so ranges and ``!`` agree)."""
    pieces: list[_Piece] = []
    i, n = 0, len(glob)
    while i < n:
        c, i = glob[i], i + 1
        if c == "*":
            if not pieces or pieces[-1] != "*":
                pieces.append("*")
            continue
        text = c
        if c == "[":  # the class's end, found exactly as fnmatch.translate finds it
            j = i + (i < n and glob[i] == "!")
            j += j < n and glob[j] == "]"
            while j < n and glob[j] != "]":
                j += 1
            if j < n:
                text, i = glob[i - 1 : j + 1], j + 1
        pieces.append(frozenset(ch for ch in _HUMAN_CHARS if fnmatchcase(ch, text)))
    return tuple(pieces)


def _stars(pieces: tuple[_Piece, ...], at: set[int]) -> frozenset[int]:
    """Positions ``at`` and those behind any star there (a star also matches nothing)."""
    todo = list(at)
    while todo:
        p = todo.pop()
        if p < len(pieces) and pieces[p] == "*" and p + 1 not in at:
            at.add(p + 1)
            todo.append(p + 1)
    return frozenset(at)


def _step(pieces: tuple[_Piece, ...], at: frozenset[int], ch: str) -> frozenset[int]:
    """The glob positions after reading ``ch`` from positions ``at``."""
    moved = set()
    for p in at:
        if p < len(pieces):
            piece = pieces[p]
            if piece == "*":
                moved.add(p)
            elif ch in piece:
                moved.add(p + 1)
    return _stars(pieces, moved)


@lru_cache(maxsize=256)
def glob_covers_every_human(glob: str) -> bool:
    """Does ``glob`` match every possible human id (``*``, ``usr_*``, ``usr_?*``, …)?

    Exact: every word of ``usr_[a-z0-9_]{1,64}`` is walked at once, as a set of glob
    positions per length, so ``usr_a*`` or ``usr_*_*`` are told apart from ``usr_*``.
    """
    pieces = _glob_pieces(glob)
    level = {_stars(pieces, {0})}
    for length in range(_HUMAN_MAX):
        alphabet = _HUMAN_PREFIX[length] if length < len(_HUMAN_PREFIX) else _HUMAN_CHARS
        level = {_step(pieces, at, ch) for at in level for ch in alphabet}
        if any(not at for at in level):
            return False  # some id is refused from here on, whatever follows
        if length >= len(_HUMAN_PREFIX) and any(len(pieces) not in at for at in level):
            return False  # an id of this length is not matched
    return True


def covers_everyone(matched: Iterable[AccessRule]) -> bool:
    """Does one of these rules cover every possible human id, those not known yet too?

    A consent started without a human id may end with anyone, so starting one needs an
    admin rule for which this holds: pass only the admin rules to ask that.
    """
    return any(glob_covers_every_human(glob) for rule in matched for glob in rule.humans)
