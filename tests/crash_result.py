"""What the crash campaign (tests/crash_campaign.py) recorded, and how it is judged.

Every spent refresh token presented again (the simulator's
:class:`~haasd.simulator.SpentTokenRecord`: a grace replay or a reuse event) must be
*explained* by a kill: the token was rotated at the server no earlier than
:data:`WINDOW` before the kill and no later than a request sent before it could still
arrive — the request was sent, the answer never reached the store: the unavoidable
window. Any other is a duplicate refresh. A grant lost (refused by the server after a
restart) must follow a reuse event a kill explains, and haasd must have reported it:
state ``needs_reconsent`` with the interrupted-rotation reason, and its log's warning.
With a reuse grace window nothing may be lost at all.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from haasd.simulator import SpentTokenRecord

#: the longest a rotation's answer may take from the server to the store on a busy machine
WINDOW = 1.5
#: how long after a kill a request sent before it may still be handled (beyond latency)
ARRIVAL = 0.5


@dataclass(frozen=True)
class Kill:
    #: what was chosen: "random", "before_send", ..., "rekey", "restore"
    point: str
    #: when the process died (its own note, or the driver's SIGKILL)
    at: float
    #: the injected point was reached (False: the driver killed it after waiting)
    reached: bool
    #: the step of rekey/restore, or what else the kill met
    detail: str = ""


@dataclass(frozen=True)
class Lost:
    human_id: str
    at: float
    #: haasd said so: needs_reconsent, the interrupted-rotation reason, a log warning
    reported: bool
    last_error: str | None


@dataclass
class Served:
    ok: int = 0
    #: live when asked for, expired by the time a slow answer arrived
    late: int = 0
    #: (human, when) for each token served that the simulator refused
    dead: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Result:
    seed: int
    grace: float
    latency: float
    kills: list[Kill]
    spent: list[SpentTokenRecord]
    lost: list[Lost]
    served: Served
    refreshes: int
    #: problems the checks after each kill found (integrity, half states, unserved grants)
    found: list[str]
    #: what became of interrupted consents, by the answer to the repeated callback
    consents: Counter[str]
    code_replays: int
    #: which key opened the store after a killed rekey ("old", "new")
    rekeyed: Counter[str]
    seconds: float

    def explain(self, spent: SpentTokenRecord) -> Kill | None:
        """The kill that put ``spent``'s rotation in the unavoidable window."""
        for kill in self.kills:
            late = kill.at + self.latency + ARRIVAL
            if kill.at - WINDOW <= spent.rotated_at <= late and spent.time >= kill.at:
                return kill
        return None

    @property
    def explained(self) -> list[tuple[SpentTokenRecord, Kill]]:
        return [(s, k) for s in self.spent if (k := self.explain(s)) is not None]

    @property
    def duplicates(self) -> list[SpentTokenRecord]:
        return [s for s in self.spent if self.explain(s) is None]

    @property
    def unexplained_losses(self) -> list[Lost]:
        reused = {s.human_id for s, _ in self.explained if not s.replayed}
        return [lost for lost in self.lost if lost.human_id not in reused]

    def by_point(self) -> Counter[str]:
        return Counter(k.point for k in self.kills)

    def in_window(self) -> Counter[str]:
        """Kills that explain at least one replay or reuse event, by point."""
        kills = {id(k): k for _, k in self.explained}
        return Counter(k.point for k in kills.values())

    def rows(self) -> list[tuple[str, str]]:
        points = self.by_point()
        window = self.in_window()
        reached = Counter(k.point for k in self.kills if k.reached)
        per_point = [
            (f"  {point} (reached; in the window)",
             f"{n} ({reached[point]}; {window[point]})")
            for point, n in sorted(points.items())
        ]  # fmt: skip
        reported = sum(1 for lost in self.lost if lost.reported)
        rekeyed = ", ".join(f"{k} {n}" for k, n in sorted(self.rekeyed.items())) or "-"
        consents = ", ".join(f"{k} {n}" for k, n in sorted(self.consents.items())) or "-"
        return [
            ("seed", str(self.seed)),
            ("reuse grace (s)", f"{self.grace:g}"),
            ("wall time (s)", f"{self.seconds:.0f}"),
            ("SIGKILLs", str(len(self.kills))),
            *per_point,
            ("kills inside the unavoidable window", str(sum(window.values()))),
            ("mid_commit: write committed / not", self._commits()),
            ("refreshes (rotations)", str(self.refreshes)),
            ("grace replays", str(sum(1 for s in self.spent if s.replayed))),
            ("reuse events", str(sum(1 for s in self.spent if not s.replayed))),
            ("grants lost (reported as such)", f"{len(self.lost)} ({reported})"),
            ("lost without a kill in the window", str(len(self.unexplained_losses))),
            ("duplicate refreshes (unexplained)", str(len(self.duplicates))),
            (
                "tokens served / dead at the simulator",
                f"{self.served.ok} / {len(self.served.dead)}",
            ),
            ("answers slower than the serve margin", str(self.served.late)),
            ("killed rekeys: key in force", rekeyed),
            ("interrupted consents, callback again", consents),
            ("authorization codes presented twice", str(self.code_replays)),
            ("problems found by the checks", str(len(self.found))),
        ]

    def _commits(self) -> str:
        struck = [k.detail for k in self.kills if k.point == "mid_commit" and k.reached]
        done = sum(1 for d in struck if d.endswith(" committed") and "not" not in d)
        return f"{done} / {len(struck) - done}"

    def table(self) -> str:
        width = max(len(name) for name, _ in self.rows())
        return "\n".join(f"{name:<{width}}  {value}" for name, value in self.rows())

    def problems(self) -> list[str]:
        """What the campaign fails on (empty: it passed)."""
        found = list(self.found)
        for spent in self.duplicates:
            near = [k for k in self.kills if abs(k.at - spent.rotated_at) < 10]
            found.append(f"a duplicate refresh no kill explains: {spent}; kills near: {near}")
        if self.unexplained_losses:
            found.append(f"grants lost without a kill in the window: {self.unexplained_losses}")
        if self.grace > 0 and self.lost:
            found.append(f"grants lost despite the grace window: {self.lost}")
        silent = [lost for lost in self.lost if not lost.reported]
        if silent:
            found.append(f"grants lost without haasd saying why: {silent}")
        if self.served.dead:
            found.append(f"tokens served that the simulator refused: {self.served.dead[:5]}")
        if self.code_replays:
            found.append(f"{self.code_replays} authorization code(s) presented twice")
        return found
