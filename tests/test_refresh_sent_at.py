"""A refreshed token's life counts from when its request went, not from when haasd got
round to reading the answer: a process paused in between (SIGSTOP, a suspended host, a
long stall) must not believe the token lives longer than the server said, or it serves
a token the server no longer takes. (The long fault campaign's grace run found it: an
instance paused while its refresh was at the server served a dead token once resumed.)
"""

from __future__ import annotations

from pathlib import Path

from harness import running, simulator

from haasd.clock import ManualClock

HOUR = 3600.0
PAUSE = 30.0


class PausingClock(ManualClock):
    """A manual clock whose wall time jumps ahead at once, as it does for a process that
    was stopped and resumed (the server's clock — the simulator's — moves on too)."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = 0.0

    def time(self) -> float:
        return super().time() + self.paused


async def test_a_pause_between_the_answer_and_its_reading_does_not_lengthen_the_token(
    tmp_path: Path,
) -> None:
    clock = PausingClock()
    sim = simulator(clock, rotate_refresh_tokens=True)

    def pause(point: str, human_id: str) -> None:
        if point == "answered" and not clock.paused:
            clock.paused = PAUSE  # the answer came; the process sleeps before reading it

    async with sim.running(), running(tmp_path, sim=sim, checkpoint=pause) as h:
        await h.consent("usr_a")
        first = h.refresher.grant("usr_a")
        assert first is not None
        await clock.advance(0.8 * HOUR)  # the scheduled refresh went, paused on its answer
        assert clock.paused, "the scheduled refresh was answered"
        grant = h.refresher.grant("usr_a")
        assert grant is not None and grant.access_token != first.access_token
        token = grant.access_token.reveal()
        ends = sim.access_token_expires_at(token)
        assert ends is not None
        assert grant.access_expires_at <= ends, (
            f"haasd takes the token to live {grant.access_expires_at - ends:.0f}s longer"
            " than the server issued it for"
        )
        # where haasd still takes it for live, so does the server
        await clock.advance(grant.access_expires_at - clock.time() - 1)
        assert sim.validate_access_token(token) == "usr_a"
