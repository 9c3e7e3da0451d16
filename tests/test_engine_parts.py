"""The engine's small parts on their own: single flight, coordination in process, health."""

from __future__ import annotations

import anyio
import pytest

from haasd.coordination import InProcess, Permit
from haasd.demand import RefusalReason
from haasd.errors import HaasdError, UnknownHumanError
from haasd.grants import Policy
from haasd.health import Health, health_reasons
from haasd.refresher._flight import Background, SingleFlight
from haasd.refresher._memory import LIFETIMES_KEPT, Memory


async def test_one_flight_per_grant_and_a_caller_going_away_cannot_cut_it() -> None:
    release, runs = anyio.Event(), []

    async def work() -> HaasdError | None:
        runs.append("usr_a")
        await release.wait()
        return UnknownHumanError("usr_a")

    background = Background()
    flights = SingleFlight(background)
    async with anyio.create_task_group() as tg:
        background.bind(tg)
        first = flights.fly("usr_a", work)
        assert flights.fly("usr_a", work) is first, "a second caller joins the first"
        assert flights.get("usr_a") is first and len(flights) == 1
        with anyio.move_on_after(0.01):  # the caller gives up waiting...
            await first.done.wait()
        assert not first.done.is_set()
        release.set()  # ...and the flight goes on to its end all the same
        await first.done.wait()
    assert runs == ["usr_a"]
    assert isinstance(first.error, UnknownHumanError)
    assert flights.get("usr_a") is None and len(flights) == 0


def test_a_flight_needs_the_engine_running() -> None:
    async def work() -> HaasdError | None:
        return None

    flights = SingleFlight(Background())
    with pytest.raises(AssertionError, match="not running"):
        flights.fly("usr_a", work)
    assert flights.get("usr_a") is None


class Heard:
    """A coordination listener that notes what it hears."""

    def __init__(self) -> None:
        self.changed_: list[str] = []

    def changed(self, human_id: str) -> None:
        self.changed_.append(human_id)

    def released(self, human_id: str) -> None:
        raise AssertionError("one haasd has no leases")

    def resync(self) -> None:
        raise AssertionError("one haasd never resyncs")

    def replan(self) -> None:
        raise AssertionError("one haasd never replans")


async def test_in_process_coordination_grants_every_permit_and_tells_nobody() -> None:
    coordination = InProcess()
    heard = Heard()
    coordination.subscribe(heard)
    permit = await coordination.acquire("usr_a")
    assert permit == Permit("usr_a", "local")
    assert coordination.held_now == {"usr_a"} and coordination.held(permit)
    assert coordination.defer("usr_a") == 0.0 and not coordination.shared
    assert coordination.problem() is None and not coordination.instances()
    await coordination.publish("usr_a")
    await coordination.release(permit)
    await coordination.release(permit)  # idempotent
    assert heard.changed_ == [] and coordination.held_now == frozenset()  # nobody to tell
    assert not coordination.held(permit)


def test_health_is_ok_without_reasons_and_shows_its_figures() -> None:
    assert Health().status == "ok" and Health().ok
    health = Health(reasons=("store not writable: disk full",), grants=3, rate_blocked_for=2.5)
    assert (health.status, health.ok) == ("degraded", False)
    assert health.to_json() == {
        "status": "degraded",
        "reasons": ["store not writable: disk full"],
        "grants": 3,
        "refresh_backlog": 0,
        "in_flight": 0,
        "rate_budget_remaining": 0,
        "rate_blocked_for": 2.5,
    }


def test_health_reasons_come_in_order_and_name_at_most_three() -> None:
    reasons = health_reasons(
        client_fault="the server rejects haasd's client (invalid_client)",
        store_error=None,
        at_risk=2,
        refused_peers=[(uid, RefusalReason.COOLDOWN, 5) for uid in (1, 2, 3, 4)] + [],
        unreadable=frozenset({"usr_d", "usr_c", "usr_b", "usr_a"}),
        faults={"usr_x": "KeyError during refresh"},
    )
    assert reasons[0].startswith("refreshing stopped: the server rejects")
    assert reasons[1] == "2 grant(s) may expire before the rate budget reaches them"
    assert [r for r in reasons if r.startswith("on-demand")][-1].startswith(
        "on-demand refreshes refused for peer uid 3: 5 in the last minute (last: cooldown)"
    )
    assert any(r.startswith("4 grant(s) quarantined, store row unreadable: usr_a, usr_b, usr_c;")
               for r in reasons)  # fmt: skip
    assert reasons[-1] == "1 grant(s) met an internal error: usr_x (KeyError during refresh)"
    assert len(reasons) == 7
    assert (
        health_reasons(
            client_fault=None,
            store_error=None,
            at_risk=0,
            refused_peers=[],
            unreadable=frozenset(),
            faults={},
        )
        == ()
    )


def test_one_short_answer_does_not_shorten_the_lifetime_the_server_grants() -> None:
    memory = Memory(Policy())
    assert memory.lifetime is None
    memory.lifetimes.extend([3600.0, 2.0])  # a reuse-grace replay: the token's time left
    assert memory.lifetime == 3600.0
    memory.lifetimes.extend([600.0] * LIFETIMES_KEPT)  # the server changed its mind
    assert memory.lifetime == 600.0
