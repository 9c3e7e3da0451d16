from __future__ import annotations

from typing import Any

import pytest

from haasd.errors import TokenResponseError, UnnamedHumanError
from haasd.tokens import (
    DEFAULT_LIFETIME,
    MAX_LIFETIME,
    parse_first_grant,
    parse_refresh_answer,
    parse_token_response,
)

SEED_ANSWER: dict[str, Any] = {
    "access_token": "haas_at_Kj7mNq2xPvL8",
    "token_type": "Bearer",
    "expires_in": 3600,
    "refresh_token": "haas_rt_Xm9pQw4zRtY2",
    "scope": "tasks:dispatch status:read",
    "human_id": "usr_maria_42",
}


def test_the_seed_answer_parses() -> None:
    answer = parse_token_response(SEED_ANSWER)
    assert answer.access_token.reveal() == "haas_at_Kj7mNq2xPvL8"
    assert answer.refresh_token is not None
    assert answer.refresh_token.reveal() == "haas_rt_Xm9pQw4zRtY2"
    assert (answer.expires_in, answer.scope, answer.human_id) == (
        3600,
        ("tasks:dispatch", "status:read"),
        "usr_maria_42",
    )
    assert answer.refresh_token_expires_in is None
    assert "haas_at_" not in repr(answer) and "haas_rt_" not in repr(answer)


def test_refresh_answer_may_omit_refresh_token_scope_and_human() -> None:
    data = {k: SEED_ANSWER[k] for k in ("access_token", "token_type", "expires_in")}
    answer = parse_token_response(data, human_id="usr_maria_42", scope=("tasks:dispatch",))
    assert answer.refresh_token is None
    assert answer.scope == ("tasks:dispatch",)
    assert answer.human_id == "usr_maria_42"


def test_server_lifetime_for_refresh_token_is_kept() -> None:
    answer = parse_token_response({**SEED_ANSWER, "refresh_token_expires_in": 86400})
    assert answer.refresh_token_expires_in == 86400


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"access_token": None}, "access_token is missing"),
        ({"access_token": 5}, "access_token is missing"),
        ({"access_token": "x" * 5000}, "not a plausible token"),
        ({"token_type": "mac"}, "Bearer"),
        ({"expires_in": "soon"}, "whole number"),
        ({"expires_in": 1.5}, "whole number"),
        ({"expires_in": True}, "whole number"),
        ({"scope": ""}, "scope"),
        ({"human_id": "maria"}, "usr_"),
        ({"refresh_token": None}, "refresh_token is missing"),
    ],
)
def test_malformed_answers_are_refused_without_echoing_tokens(
    change: dict[str, Any], message: str
) -> None:
    data = {**SEED_ANSWER, **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(TokenResponseError, match=message) as info:
        parse_token_response(data)
    assert "haas_at_" not in str(info.value) and "haas_rt_" not in str(info.value)


def test_an_answer_that_is_no_object_is_refused() -> None:
    with pytest.raises(TokenResponseError, match="not a JSON object"):
        parse_token_response(["not", "an", "object"])


@pytest.mark.parametrize(
    ("change", "field", "kept"),
    [
        ({"scope": "status:read \ud800"}, "scope", ("tasks:dispatch",)),
        ({"scope": "status:read \x1b[2J"}, "scope", ("tasks:dispatch",)),
        ({"scope": 'status:read "quoted"'}, "scope", ("tasks:dispatch",)),
        ({"scope": ["status:read"]}, "scope", ("tasks:dispatch",)),
        ({"expires_in": "soon"}, "expires_in", 1800),
        ({"expires_in": -5}, "expires_in", 0),
        ({"expires_in": 10**12}, "expires_in", MAX_LIFETIME),
        ({"token_type": "mac"}, "token_type", "bearer"),
        ({"human_id": "usr_bob_1"}, "human_id", "usr_maria_42"),
        ({"refresh_token_expires_in": "soon"}, "refresh_token_expires_in", None),
    ],
)
def test_a_refresh_answer_keeps_its_rotation_whatever_else_is_wrong(
    change: dict[str, Any], field: str, kept: object
) -> None:
    """The server spent the old refresh token: a bad field beside the new one is refused
    with an escaped warning, never by dropping the tokens."""
    answer = parse_token_response(
        {**SEED_ANSWER, **change},
        human_id="usr_maria_42",
        scope=("tasks:dispatch",),
        default_lifetime=1800,
    )
    assert answer.refresh_token is not None
    assert answer.refresh_token.reveal() == "haas_rt_Xm9pQw4zRtY2"
    assert answer.access_token.reveal() == "haas_at_Kj7mNq2xPvL8"
    assert len(answer.warnings) == 1 and field in answer.warnings[0]
    warning = answer.warnings[0]
    assert warning.isascii() and warning.isprintable()  # escaped: no ESC, no surrogate
    assert "haas_at_" not in warning and "haas_rt_" not in warning
    values = {
        "scope": answer.scope,
        "expires_in": answer.expires_in,
        "token_type": "bearer",
        "human_id": answer.human_id,
        "refresh_token_expires_in": answer.refresh_token_expires_in,
    }
    assert values[field] == kept


def test_a_refresh_answer_with_a_bad_access_token_still_hands_over_its_refresh_token() -> None:
    with pytest.raises(TokenResponseError, match="access_token") as info:
        parse_token_response(
            {**SEED_ANSWER, "access_token": "bad token\n"}, human_id="usr_maria_42"
        )
    assert info.value.refresh_token is not None
    assert info.value.refresh_token.reveal() == "haas_rt_Xm9pQw4zRtY2"


def test_a_first_grant_must_be_right_in_every_field() -> None:
    with pytest.raises(TokenResponseError, match="malformed scope token"):
        parse_token_response({**SEED_ANSWER, "scope": "status:read \ud800"})


# --- a plain RFC 6749 answer (§5.1) ---------------------------------------------------------

PLAIN: dict[str, Any] = {
    "access_token": "haas_at_Kj7mNq2xPvL8",
    "token_type": "bearer",
    "expires_in": 20,
    "refresh_token": "haas_rt_Xm9pQw4zRtY2",
}


def test_a_plain_first_grant_takes_the_human_and_scope_the_consent_asked_for() -> None:
    answer = parse_first_grant(PLAIN, human_id="usr_maria_42", scope=("status:read",))
    assert (answer.human_id, answer.scope, answer.expires_in) == (
        "usr_maria_42",
        ("status:read",),
        20,
    )
    assert not answer.lifetime_defaulted


def test_the_answers_human_and_scope_win_a_mismatch_is_the_callers_to_report() -> None:
    data = {**PLAIN, "human_id": "usr_bob_7", "scope": "tasks:read"}
    answer = parse_first_grant(data, human_id="usr_maria_42", scope=("status:read",))
    assert (answer.human_id, answer.scope) == ("usr_bob_7", ("tasks:read",))


def test_a_first_grant_nobody_names_the_human_of_keeps_its_refresh_token() -> None:
    with pytest.raises(UnnamedHumanError, match="--human") as info:
        parse_first_grant(PLAIN, scope=("status:read",))
    assert isinstance(info.value, TokenResponseError)
    assert info.value.refresh_token is not None
    assert info.value.refresh_token.reveal() == "haas_rt_Xm9pQw4zRtY2"
    assert "haas_rt_" not in str(info.value)


def test_no_scope_and_none_asked_is_refused_as_for_an_import() -> None:
    for parse in (parse_token_response, parse_first_grant):
        with pytest.raises(TokenResponseError, match="scope is missing") as info:
            parse({**PLAIN, "human_id": "usr_maria_42"})
        assert info.value.refresh_token is not None  # handed over all the same


def test_no_expires_in_means_the_default_lifetime_on_both_paths() -> None:
    lean = {k: v for k, v in SEED_ANSWER.items() if k != "expires_in"}
    first = parse_first_grant(lean, default_lifetime=1200)
    again = parse_refresh_answer(lean, human_id="usr_maria_42", default_lifetime=1200)
    assert (first.expires_in, again.expires_in) == (1200, 1200)
    assert first.lifetime_defaulted and again.lifetime_defaulted
    assert again.warnings == ()  # an omission is allowed, not a fault (warned once, above)
    assert parse_token_response(lean).expires_in == DEFAULT_LIFETIME


@pytest.mark.parametrize("token_type", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_token_type_is_matched_case_insensitively_on_both_paths(token_type: str) -> None:
    data = {**SEED_ANSWER, "token_type": token_type}
    assert parse_first_grant(data).human_id == "usr_maria_42"
    assert parse_refresh_answer(data, human_id="usr_maria_42").warnings == ()


@pytest.mark.parametrize(
    "change",
    [
        {"access_token": "bad token"},
        {"token_type": "mac"},
        {"expires_in": "an hour"},
        {"scope": "status:read \ud800"},
        {"human_id": "Maria"},
        {"refresh_token_expires_in": 0},
    ],
)
def test_every_malformed_first_grant_carries_its_well_formed_refresh_token(
    change: dict[str, Any],
) -> None:
    with pytest.raises(TokenResponseError) as info:
        parse_first_grant({**SEED_ANSWER, **change}, human_id="usr_maria_42")
    assert not isinstance(info.value, UnnamedHumanError)
    assert info.value.refresh_token is not None
    assert info.value.refresh_token.reveal() == "haas_rt_Xm9pQw4zRtY2"
    assert "haas_rt_" not in str(info.value) and "haas_at_" not in str(info.value)


def test_a_refresh_answer_without_refresh_token_keeps_the_current_one() -> None:
    lean = {k: v for k, v in SEED_ANSWER.items() if k != "refresh_token"}
    answer = parse_refresh_answer(lean, human_id="usr_maria_42", scope=("tasks:dispatch",))
    assert answer.refresh_token is None  # after_refresh keeps the grant's (RFC 6749 §6)


@pytest.mark.parametrize("lifetime", [0, -1, 366 * 86400 + 1])
def test_a_default_lifetime_out_of_range_is_a_programming_error(lifetime: int) -> None:
    with pytest.raises(ValueError, match="default_lifetime"):
        parse_first_grant(SEED_ANSWER, default_lifetime=lifetime)


@pytest.mark.parametrize(
    ("given", "read"), [("3599", 3599), (" 20 ", 20), (0, 0), ("0", 0), (-1, 0), (10**9, None)]
)
def test_expires_in_is_never_read_longer_than_the_server_said(
    given: object, read: int | None
) -> None:
    """A count of seconds in a string is read (some servers send one); zero or less is a
    token already expired — a grace replay of a token whose time ran out says 0 — never
    the default lifetime; an absurd count is capped. On both paths."""
    expected = MAX_LIFETIME if read is None else read
    data = {**SEED_ANSWER, "expires_in": given}
    assert parse_token_response(data).expires_in == expected
    again = parse_token_response(data, human_id="usr_maria_42", default_lifetime=1800)
    assert again.expires_in == expected and not again.lifetime_defaulted
    assert bool(again.warnings) == (expected in (0, MAX_LIFETIME) and str(given) != "0")
