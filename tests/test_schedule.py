from __future__ import annotations

from haasd.schedule import Schedule


def test_one_live_entry_per_grant_earliest_first() -> None:
    s = Schedule()
    assert s.place("usr_a", 50.0) is True
    assert s.place("usr_b", 10.0) is True
    assert s.place("usr_c", 30.0) is False
    s.place("usr_a", 5.0)  # moved: the entry at 50 is now stale
    s.drop("usr_c")
    assert s.next_deadline() == 5.0
    assert list(s.pop_due(40.0)) == ["usr_a", "usr_b"]
    assert list(s.pop_due(100.0)) == [], "stale and dropped entries never surface"


def test_ready_queue_serves_the_earliest_expiry_first() -> None:
    s = Schedule()
    s.make_ready("usr_late", 900.0)
    s.make_ready("usr_soon", 100.0)
    s.make_ready("usr_mid", 500.0)
    assert s.backlog == 3
    assert s.ready_expiries() == [100.0, 500.0, 900.0]
    assert [s.take_ready(), s.take_ready(), s.take_ready(), s.take_ready()] == [
        "usr_soon",
        "usr_mid",
        "usr_late",
        None,
    ]


def test_placing_every_grant_at_once_orders_them_as_placing_each() -> None:
    whens = {f"usr_{i:03d}": float((i * 37) % 101) for i in range(100)}
    one, many = Schedule(), Schedule()
    for human_id, when in whens.items():
        one.place(human_id, when)
    many.place("usr_000", 500.0)  # an entry already there is replaced, as by place
    many.place_all(whens.items())
    many.place("usr_001", 1000.0)  # and later moves still work
    one.place("usr_001", 1000.0)
    assert many.next_deadline() == one.next_deadline() == 0.0
    expected = list(one.pop_due(2000.0))
    assert list(many.pop_due(2000.0)) == expected
    assert len(expected) == 100 and expected[-1] == "usr_001"


def test_a_deadline_placed_again_at_the_same_instant_fires_once() -> None:
    s = Schedule()
    when = 10.0
    s.place("usr_a", when)
    s.place("usr_a", 20.0)
    s.place("usr_a", when)  # the same float object as the first, now stale, entry
    assert list(s.pop_due(15.0)) == ["usr_a"]
    assert list(s.pop_due(30.0)) == [], "the entry at 20 went stale"


def test_placing_a_grant_again_at_its_deadline_adds_no_entry() -> None:
    s = Schedule()
    s.place_all([("usr_a", 10.0), ("usr_b", 20.0)])
    assert s.place("usr_a", 10.0) is False and s.place("usr_b", 20.0) is False
    assert s.entries == 2, "a replan that moves nothing leaves no stale entry behind"
    s.place("usr_b", 15.0)
    assert s.entries == 3
    assert list(s.pop_due(30.0)) == ["usr_a", "usr_b"]
    s.place("usr_a", 10.0)  # fired already: placed at the same instant, it is due again
    assert list(s.pop_due(30.0)) == ["usr_a"]
