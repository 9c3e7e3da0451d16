"""The versions a cluster's instance fences its refreshes on (haasd.pgstore._versions):
kept in flat arrays for the grants of the last full read, they must answer exactly as
the plain dict they replace — tried on thousands of random sequences of reads and
writes against that dict."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from haasd.pgstore._versions import Versions

IDS = [f"usr_{i:03d}" for i in range(40)]
ids = st.sampled_from(IDS)
versions = st.integers(min_value=0, max_value=2**40)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("full read"), st.lists(st.tuples(ids, versions), max_size=30)),
        st.tuples(st.just("read"), st.tuples(ids, versions)),
        st.tuples(st.just("put"), st.tuples(ids, versions)),
        st.tuples(st.just("pop"), ids),
    ),
    max_size=40,
)


@settings(max_examples=3000, deadline=None)
@given(operations)
def test_answers_as_the_dict_it_replaces(ops: list[tuple[str, object]]) -> None:
    book, model = Versions(), dict[str, int]()
    for op, arg in ops:
        if op == "full read":
            assert isinstance(arg, list)
            book.restart()
            model.clear()
            for human_id, version in sorted(arg):  # the database's order (ids repeat)
                book.read(human_id, version)
                model[human_id] = version
        elif op in ("read", "put"):
            assert isinstance(arg, tuple)
            human_id, version = arg
            (book.read if op == "read" else book.put)(human_id, version)
            model[human_id] = version
        else:
            assert isinstance(arg, str)
            book.pop(arg)
            model.pop(arg, None)
        assert {h: book.get(h) for h in IDS} == {h: model.get(h) for h in IDS}
        assert len(book) == len(model)


def test_a_full_read_is_kept_flat() -> None:
    book = Versions()
    for i, human_id in enumerate(IDS):
        book.read(human_id, 1_000 + i)
    book.put(IDS[3], 7)  # a later write replaces its slot
    book.pop(IDS[4])
    book.put("usr_new", 9)  # not in the full read
    assert (book.get(IDS[3]), book.get(IDS[4]), book.get("usr_new")) == (7, None, 9)
    assert book._more == {"usr_new": 9}  # noqa: SLF001 - the point: one dict entry only
