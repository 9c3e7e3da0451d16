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
