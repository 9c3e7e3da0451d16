"""Every input bench/fuzz.py kept (tests/fuzz_corpus/<target>/) replayed through the same
target functions (tests/fuzz_targets.py), without atheris: what the fuzzer found once stays
found, and a change that breaks one of its properties fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz_targets import TARGETS

CORPUS = Path(__file__).parent / "fuzz_corpus"
INPUTS = sorted(p for target in TARGETS for p in (CORPUS / target).iterdir() if p.is_file())


def test_the_corpus_is_small_and_covers_every_target() -> None:
    assert {p.parent.name for p in INPUTS} == set(TARGETS)
    assert len(INPUTS) <= 200
    assert sum(p.stat().st_size for p in INPUTS) <= 200 * 1024


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_kept_input_keeps_its_properties(target: str) -> None:
    inputs = [p for p in INPUTS if p.parent.name == target]
    assert inputs
    for path in inputs:
        try:
            TARGETS[target](path.read_bytes())
        except Exception as exc:
            raise AssertionError(f"{target} input {path.name}: {exc!r}") from exc
