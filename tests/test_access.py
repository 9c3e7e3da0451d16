"""The pure access decisions: which rules match a peer, which humans and scopes they grant."""

from __future__ import annotations

import dataclasses
from fnmatch import fnmatchcase

import pytest

from haasd.config import AccessRule
from haasd.server.access import (
    Decision,
    Peer,
    covers_everyone,
    decide,
    decide_for,
    default_rules,
    effective_rules,
    excess_scopes,
    glob_covers_every_human,
    is_admin,
    may_see,
    rules_for,
)
from haasd.tokens import HUMAN_ID_RE

DAEMON = 990
APP = Peer(uid=1001, gid=2001, pid=4242)


def rule(
    uid: int | None = None,
    gid: int | None = None,
    humans: tuple[str, ...] = ("usr_*",),
    scopes: tuple[str, ...] | None = None,
    *,
    admin: bool = False,
) -> AccessRule:
    return AccessRule(uid=uid, gid=gid, humans=humans, scopes=scopes, admin=admin)


def test_without_rules_root_and_the_daemons_user_are_admins_of_everyone() -> None:
    for uid in (0, DAEMON):
        peer = Peer(uid, 5, 1)
        assert decide([], peer, "usr_maria_42", daemon_uid=DAEMON, need_admin=True).allowed
        assert is_admin(rules_for(effective_rules([], DAEMON), peer))
    refused = decide([], APP, "usr_maria_42", daemon_uid=DAEMON)
    assert not refused.allowed
    assert "no [[access]] rule" in refused.reason


def test_default_rules_do_not_repeat_root() -> None:
    assert len(default_rules(0)) == 1
    assert [r.uid for r in default_rules(DAEMON)] == [0, DAEMON]


def test_with_rules_root_gets_nothing_it_is_not_given() -> None:
    rules = [rule(uid=APP.uid)]
    assert not decide(rules, Peer(0, 0, 1), "usr_a", daemon_uid=DAEMON).allowed
    assert decide(rules, APP, "usr_a", daemon_uid=DAEMON).allowed


@pytest.mark.parametrize(
    ("the_rule", "matches"),
    [
        (rule(uid=1001), True),
        (rule(uid=1002), False),
        (rule(gid=2001), True),
        (rule(gid=2002), False),
        (rule(uid=1001, gid=2001), True),
        (rule(uid=1001, gid=2002), False),  # a rule naming both needs both
        (rule(uid=1002, gid=2001), False),
        (rule(), False),  # names nobody: matches nobody
    ],
)
def test_a_rule_matches_on_every_id_it_names(the_rule: AccessRule, matches: bool) -> None:
    assert matches == bool(rules_for([the_rule], APP))


@pytest.mark.parametrize(
    ("human_id", "allowed"),
    [
        ("usr_team_a", True),
        ("usr_team_", True),
        ("usr_maria_42", True),
        ("usr_mario_42", False),
        ("usr_TEAM_a", False),  # case matters
        ("xusr_team_a", False),
    ],
)
def test_human_globs(human_id: str, allowed: bool) -> None:
    rules = [rule(uid=1001, humans=("usr_team_*", "usr_maria_42"))]
    assert allowed == decide(rules, APP, human_id, daemon_uid=DAEMON).allowed
    assert allowed == may_see(rules_for(rules, APP), human_id)


def test_an_unrestricted_rule_requires_only_what_is_asked() -> None:
    matched = rules_for([rule(uid=1001)], APP)
    assert Decision(True, frozenset()) == decide_for(matched, "usr_a")
    asked = frozenset({"tasks:read"})
    assert Decision(True, asked) == decide_for(matched, "usr_a", scopes=asked)


def test_a_rule_with_scopes_serves_only_tokens_within_them() -> None:
    """Least privilege: a status:read rule never hands out a token that can dispatch."""
    matched = rules_for([rule(uid=1001, scopes=("tasks:dispatch", "status:read"))], APP)
    decision = decide_for(matched, "usr_a")
    assert decision.allowed and decision.required == frozenset()
    assert excess_scopes(decision, ("status:read",)) == frozenset()
    assert excess_scopes(decision, ("tasks:dispatch", "status:read")) == frozenset()
    assert excess_scopes(decision, ("status:read", "profile:read")) == {"profile:read"}
    asked = frozenset({"status:read"})
    assert asked == decide_for(matched, "usr_a", scopes=asked).required


def test_the_widest_matching_rule_decides_what_a_token_may_carry() -> None:
    rules = [
        rule(uid=1001, humans=("usr_a",), scopes=("status:read",)),
        rule(gid=2001, humans=("usr_a",), scopes=("status:read", "tasks:read")),
    ]
    decision = decide_for(rules_for(rules, APP), "usr_a")
    assert excess_scopes(decision, ("status:read", "tasks:read")) == frozenset()
    assert excess_scopes(decision, ("tasks:dispatch", "tasks:read")) == {"tasks:dispatch"}
    unrestricted = decide_for(rules_for([*rules, rule(uid=1001)], APP), "usr_a")
    assert excess_scopes(unrestricted, ("tasks:dispatch",)) == frozenset()


def test_a_rule_with_scopes_refuses_others() -> None:
    matched = rules_for([rule(uid=1001, scopes=("status:read",))], APP)
    decision = decide_for(matched, "usr_a", scopes=frozenset({"status:read", "tasks:dispatch"}))
    assert not decision.allowed
    assert "tasks:dispatch" in decision.reason


def test_any_matching_rule_may_allow_and_the_lightest_requirement_wins() -> None:
    rules = [
        rule(uid=1001, humans=("usr_a",), scopes=("status:read",)),
        rule(gid=2001, humans=("usr_*",)),
    ]
    matched = rules_for(rules, APP)
    assert len(matched) == 2
    assert Decision(True, frozenset()) == decide_for(matched, "usr_a")
    assert decide_for(matched, "usr_b", scopes=frozenset({"tasks:read"})).allowed


def test_admin_is_per_rule_and_per_human() -> None:
    rules = [rule(uid=1001, humans=("usr_team_*",), admin=True), rule(gid=2001, humans=("usr_*",))]
    matched = rules_for(rules, APP)
    assert is_admin(matched)
    assert is_admin(matched, "usr_team_a")
    assert not is_admin(matched, "usr_maria_42")
    assert decide_for(matched, "usr_team_a", need_admin=True).allowed
    refused = decide_for(matched, "usr_maria_42", need_admin=True)
    assert not refused.allowed
    assert "admin" in refused.reason
    assert not is_admin(rules_for([rule(uid=1001)], APP))


def test_pids_never_decide() -> None:
    rules = [rule(uid=1001)]
    for pid in (1, 4242, 999999):
        assert decide(rules, dataclasses.replace(APP, pid=pid), "usr_a", daemon_uid=0).allowed


def test_peer_is_a_frozen_value() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        APP.uid = 0  # type: ignore[misc]
    assert Peer(1001, 2001, 4242) == APP


@pytest.mark.parametrize(
    "glob",
    [
        "*",
        "**",
        "usr_*",
        "usr*",
        "u*",
        "?*",
        "*?",
        "usr_?*",
        "*_*",
        "*[a-z0-9_]",
        "[!x]*",
        "usr_[a-z0-9_]*",
        "[u]sr_*",
    ],
)
def test_globs_that_match_every_human_id_cover_everyone(glob: str) -> None:
    assert glob_covers_every_human(glob)


@pytest.mark.parametrize(
    "glob",
    # a letter, a second character, a suffix, a class or a length too many; a literal "["
    [
        "usr_a*",
        "usr_??*",
        "usr_*a",
        "usr_*_*",
        "usr_[a-m]*",
        "*?" * 6,
        "usr_[!]*",
        "x*",
        "usr_",
        "",
        "usr_maria_42",
        "USR_*",
    ],
)
def test_globs_that_leave_someone_out_do_not(glob: str) -> None:
    assert not glob_covers_every_human(glob)


def test_a_glob_that_leaves_someone_out_has_a_human_it_refuses() -> None:
    # what fnmatch itself says, for the ids the decision turns on
    assert not fnmatchcase("usr_b", "usr_a*")
    assert not fnmatchcase("usr_a", "usr_??*")
    assert not fnmatchcase("usr_" + "a" * 7, "*?" * 12)
    assert all(fnmatchcase(f"usr_{c}", "*[a-z0-9_]") for c in "az09_")


def test_one_rule_covering_everyone_is_enough_and_several_narrow_ones_are_not() -> None:
    narrow = [rule(uid=1001, humans=("usr_a*", "usr_b*"), admin=True), rule(gid=2001)]
    assert covers_everyone(rules_for(narrow, APP)) is True  # the gid rule's usr_*
    assert covers_everyone([r for r in rules_for(narrow, APP) if r.admin]) is False
    assert covers_everyone([rule(uid=1001, humans=("usr_zz_*", "*"), admin=True)])
    assert not covers_everyone([])
    assert covers_everyone(default_rules(DAEMON))


def test_the_ids_walked_are_the_human_ids_of_the_docs() -> None:
    # glob_covers_every_human walks usr_[a-z0-9_]{1,64}: it must change with the form
    assert HUMAN_ID_RE.pattern == r"usr_[a-z0-9_]{1,64}"
