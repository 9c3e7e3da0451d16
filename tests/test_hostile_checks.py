"""The reading of answers the generated-input tests rely on tells valid HTTP/1.1 from
what is not: otherwise their "every answer is valid" could not fail."""

from __future__ import annotations

import pytest
from hostile import BadAnswer, answers

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
HEAD_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
REFUSED = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


def test_pipelined_answers_and_a_head_read_as_such() -> None:
    got = answers(OK + HEAD_OK + REFUSED, [b"GET", b"HEAD", b"GET"])
    assert [a.status for a in got] == [200, 200, 400]
    assert [a.body for a in got] == [b"{}", b"", b""]
    assert answers(b"", [b"GET"]) == []  # closed without a word


@pytest.mark.parametrize(
    "data",
    [
        OK[:-1],  # a body cut short
        OK + b"HTTP/1.1 200",  # a second answer cut short
        REFUSED + OK,  # an answer after one that closes the connection
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",  # a length that is no number
        b"SSH-2.0-OpenSSH\r\n",  # not HTTP
        HEAD_OK,  # a GET's answer without its body
    ],
)
def test_what_is_no_valid_answer_is_caught(data: bytes) -> None:
    with pytest.raises(BadAnswer):
        answers(data, [b"GET", b"GET"])
