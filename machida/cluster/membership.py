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

from machida.wire import control
from machida.wire.control import Address

INITIALIZER = "initializer"


@dataclass
class Member:
    """One member: its listener addresses, its control connection while up, and readiness."""

    name: str
    control: Address | None = None
    data: Address | None = None
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

    def admit(self, hello: control.Hello, host: str, conn: Any) -> Admission:
        """A worker's ``hello`` from ``host`` on ``conn``: admit it, or say why not."""
        name = hello.name
        mismatch = self.mismatch(list(hello.plan))
        if mismatch:
            return Admission(mismatch)
        known = self.members.get(name)
        if name == INITIALIZER or (known is not None and known.conn is not None):
            return Admission(f"a worker named '{name}' has already joined")
        if known is None and len(self.members) >= self.expected:
            return Admission(f"the cluster already has its {self.expected} workers")
        # the addresses it listens on, as seen from here: the host it dialled from
        self.members[name] = Member(name, (host, hello.control[1]), (host, hello.data[1]), conn)
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

    def workers(self) -> tuple[control.Worker, ...]:
        """The member list of a :class:`~machida.wire.control.Members` message, in join
        order (every member has bound its listeners by then)."""
        return tuple(control.Worker(m.name, m.control, m.data) for m in self.members.values()
                     if m.control is not None and m.data is not None)  # fmt: skip

    def data_address(self, name: str) -> Address:
        """Where member ``name`` takes its boundaries (known once it has said hello)."""
        data = self.members[name].data
        assert data is not None, f"{name} has no data address yet"
        return data

    def addresses(self) -> dict[str, tuple]:
        return {m.name: (m.control, m.data) for m in self.members.values()}

    def restore(self, workers: tuple[str, ...], peers: Any) -> None:
        """Restarted from recovery files: the recorded members, in the recorded order."""
        for peer in peers:
            self.members[peer.name] = Member(peer.name, peer.control, peer.data)
        self.members = {name: self.members[name] for name in workers}
