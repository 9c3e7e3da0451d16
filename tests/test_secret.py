from __future__ import annotations

import copy
import pickle

import pytest

from haasd.secret import Secret


def test_secret_never_shows_itself() -> None:
    s = Secret("haas_at_value")
    for text in (repr(s), str(s), f"{s}", f"{s!r}", f"{s}", repr([s]), repr({"k": s})):
        assert "haas_at_value" not in text
    assert s.reveal() == "haas_at_value"


def test_secret_equality_and_pickling() -> None:
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert copy.deepcopy(Secret("a")) == Secret("a")
    assert len(Secret("abc")) == 3 and bool(Secret("")) is False
    with pytest.raises(TypeError):
        pickle.dumps(Secret("a"))
    with pytest.raises(TypeError):
        Secret(b"bytes")  # type: ignore[arg-type]
