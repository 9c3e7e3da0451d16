"""The engine's notes of tokens served (haasd.refresher._served): while the grants load,
a token served from its row alone is noted, and its grant placed again — awake — once
every grant is in memory; afterwards only a dormant grant is placed again."""

from __future__ import annotations

from pathlib import Path

from factories import T0, make_grant

from haasd.clock import Activity
from haasd.crypto import Key, Sealer
from haasd.grants import Grant
from haasd.refresher._served import Served
from haasd.store import Store


async def test_tokens_served_while_loading_are_placed_again_once_loaded(tmp_path: Path) -> None:
    a, b, c = (make_grant(h) for h in ("usr_a", "usr_b", "usr_c"))
    placed: list[tuple[str, float]] = []
    dormant = {"usr_c"}
    async with await Store.open(tmp_path / "s.db", Sealer(Key.generate())) as store:
        served = Served(
            store, Activity(),
            idle=lambda grant, now: grant.human_id in dormant,
            place=lambda grant, now: placed.append((grant.human_id, now)),
        )  # fmt: skip
        assert served.loading
        served.note(a, T0 + 1)
        served.note(b, T0 + 2)
        assert placed == [], "nothing is placed before every grant is"
        assert (store.served_at("usr_a"), store.served_at("usr_b")) == (T0 + 1, T0 + 2)

        in_memory: dict[str, Grant] = {"usr_a": a}  # usr_b was deleted meanwhile
        served.loaded(in_memory.get, T0 + 5)
        assert placed == [("usr_a", T0 + 5)]

        served.note(a, T0 + 6)  # awake: a dict write, no reschedule
        served.note(c, T0 + 7)  # dormant: woken up
        assert placed == [("usr_a", T0 + 5), ("usr_c", T0 + 7)]
        assert store.served_at("usr_c") == T0 + 7
        served.loaded(in_memory.get, T0 + 8)
        assert len(placed) == 2, "the early ones are placed once"
