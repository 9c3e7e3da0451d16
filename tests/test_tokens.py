from __future__ import annotations

from typing import Any

import pytest

from haasd.errors import TokenResponseError
from haasd.tokens import parse_token_response

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
        ({"expires_in": "3600"}, "whole number"),
        ({"expires_in": 0}, "between 1 and"),
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
        ({"expires_in": "3600"}, "expires_in", 1800),
        ({"expires_in": -5}, "expires_in", 1800),
        ({"expires_in": 10**12}, "expires_in", 1800),
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
