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


def test_answer_for_another_human_is_refused() -> None:
    with pytest.raises(TokenResponseError, match="for human 'usr_maria_42'"):
        parse_token_response(SEED_ANSWER, human_id="usr_bob_1")
    with pytest.raises(TokenResponseError, match="not a JSON object"):
        parse_token_response(["not", "an", "object"])
