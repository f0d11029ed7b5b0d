"""The initializer's member list: who may join, in which order, and who is ready. No I/O.

Workers join by saying ``hello`` with their name, listener ports and the lines
of their topology fingerprint. :meth:`Membership.admit` refuses a worker
whose application differs from the initializer's, a second worker of a name
that is connected, and a worker beyond the expected count; a known name whose
connection was lost is taking its place again (a restarted worker). The join
order, with the initializer first, is what key placement follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

INITIALIZER = "initializer"


@dataclass
class Member:
    """One member: its listener addresses, its control connection while up, and readiness."""

    name: str
    control: list | None = None
    data: list | None = None
    conn: Any = None
    ready: bool = False


class Admission(NamedTuple):
    """What :meth:`Membership.admit` decided: ``refused`` is the reason, or empty."""

    refused: str = ""
    rejoined: bool = False


class Membership:
    """The members in join order; the initializer is first even before it has bound."""

    def __init__(self, expected: int, fingerprint: list[str]) -> None:
        self.expected = expected
        self.fingerprint = fingerprint
        self.members: dict[str, Member] = {INITIALIZER: Member(INITIALIZER)}

    @property
    def complete(self) -> bool:
        return len(self.members) == self.expected

    @property
    def all_ready(self) -> bool:
        return self.complete and all(m.ready for m in self.members.values())

    @property
    def names(self) -> list[str]:
        return list(self.members)

    def admit(self, hello: dict, host: str, conn: Any) -> Admission:
        """A worker's ``hello`` from ``host`` on ``conn``: admit it, or say why not."""
        name = str(hello.get("name"))
        mismatch = self.mismatch([str(x) for x in hello.get("plan", [])])
        if mismatch:
            return Admission(mismatch)
        known = self.members.get(name)
        if name == INITIALIZER or (known is not None and known.conn is not None):
            return Admission(f"a worker named '{name}' has already joined")
        if known is None and len(self.members) >= self.expected:
            return Admission(f"the cluster already has its {self.expected} workers")
        control = [host, int(hello["control"][1])]
        data = [host, int(hello["data"][1])]
        self.members[name] = Member(name, control, data, conn)
        return Admission(rejoined=known is not None)

    def mismatch(self, theirs: list[str]) -> str:
        """Why a worker's fingerprint lines differ from ours: the first differing line."""
        mine = self.fingerprint
        if theirs == mine:
            return ""
        for a, b in zip(mine, [*theirs, *[""] * len(mine)]):
            if a != b:
                return f"its application differs from the initializer's: '{b}' vs '{a}'"
        return "its application differs from the initializer's"

    def lost(self, conn: Any) -> str | None:
        """The control connection ``conn`` is gone: whose it was (now neither up nor ready)."""
        for member in self.members.values():
            if member.conn is conn:
                member.conn = None
                member.ready = False
                return member.name
        return None

    def of(self, conn: Any) -> Member | None:
        """The member whose control connection is ``conn``."""
        for member in self.members.values():
            if member.conn is conn:
                return member
        return None

    def others(self) -> list[Member]:
        """The other members whose control connection is up."""
        return [m for m in self.members.values() if m.name != INITIALIZER and m.conn is not None]

    def workers(self) -> list[dict]:
        """The ``topology`` message's member list, in join order."""
        return [{"name": m.name, "control": m.control, "data": m.data}
                for m in self.members.values()]  # fmt: skip

    def addresses(self) -> dict[str, tuple]:
        return {m.name: (m.control, m.data) for m in self.members.values()}

    def restore(self, workers: tuple[str, ...], peers: Any) -> None:
        """Restarted from recovery files: the recorded members, in the recorded order."""
        for peer in peers:
            data = list(peer.data) if peer.data else None
            self.members[peer.name] = Member(peer.name, list(peer.control), data)
        self.members = {name: self.members[name] for name in workers}
