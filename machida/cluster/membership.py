"""The initializer's member list: who may join it, in which order, and who is ready. No I/O.

Workers join by saying ``hello`` with their name, listener addresses and the lines
of their topology fingerprint. :meth:`Membership.admit` refuses a worker whose
application differs from the initializer's, a second worker of a name that is
connected, and a worker beyond the expected count; a known name whose
connection was lost is taking its place again (a restarted worker). The join
order, with the initializer first, is what key placement follows.

Once the cluster runs, a worker that says ``hello`` with a ``join`` count asks
to join it (``machida --join``): joiners wait in a round until as many as the
count have come (:attr:`Membership.joining`), then the initializer grows the
cluster by all of them at once; :meth:`Membership.add` and :meth:`Membership.remove`
change the member list when a grow or shrink is decided.
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
    joining: bool = False


class Membership:
    """The members in join order; the initializer is first even before it has bound."""

    def __init__(self, expected: int, fingerprint: list[str]) -> None:
        self.expected = expected
        self.fingerprint = fingerprint
        self.members: dict[str, Member] = {INITIALIZER: Member(INITIALIZER)}
        self.joining: dict[str, Member] = {}  # this round's joiners, in the order they came
        self.round = 0  # how many workers this round joins (every joiner said the same)

    @property
    def complete(self) -> bool:
        return len(self.members) == self.expected

    @property
    def all_ready(self) -> bool:
        return self.complete and all(m.ready for m in self.members.values())

    @property
    def names(self) -> list[str]:
        return list(self.members)

    @property
    def round_complete(self) -> bool:
        """Every joiner of this round has come."""
        return bool(self.joining) and len(self.joining) == self.round

    def admit(self, hello: control.Hello, host: str, conn: Any) -> Admission:
        """A worker's ``hello`` from ``host`` on ``conn``: admit it, or say why not."""
        name = hello.name
        mismatch = self.mismatch(list(hello.plan))
        if mismatch:
            return Admission(mismatch)
        known = self.members.get(name) or self.joining.get(name)
        if name == INITIALIZER or (known is not None and known.conn is not None):
            return Admission(f"a worker named '{name}' has already joined")
        # the addresses it listens on, as seen from here: the host it dialled from
        member = Member(name, (host, hello.control[1]), (host, hello.data[1]), conn)
        if known is not None:
            (self.members if name in self.members else self.joining)[name] = member
            return Admission(rejoined=True, joining=name in self.joining)
        if hello.join or self.round:  # a joiner, or a new worker of a restart that grows
            return self._join(member, hello.join or self.round)
        if len(self.members) >= self.expected:
            return Admission(f"the cluster already has its {self.expected} workers")
        self.members[name] = member
        return Admission()

    def _join(self, member: Member, count: int) -> Admission:
        """A joiner waits in the round (until the cluster runs, if it has not formed yet)."""
        if self.round and count != self.round:
            return Admission(f"Joining worker supplied invalid worker count: {count}, while "
                             f"this round joins {self.round}")  # fmt: skip
        self.round = count
        self.joining[member.name] = member
        return Admission(joining=True)

    def mismatch(self, theirs: list[str]) -> str:
        """Why a worker's fingerprint lines differ from ours: the first differing line."""
        mine = self.fingerprint
        if theirs == mine:
            return ""
        for a, b in zip(mine, [*theirs, *[""] * len(mine)]):
            if a != b:
                return f"its application differs from the initializer's: '{b}' vs '{a}'"
        return "its application differs from the initializer's"

    def take_round(self) -> list[Member]:
        """This round's joiners, who become members (the round is over)."""
        joiners = list(self.joining.values())
        self.joining, self.round = {}, 0
        self.add(joiners)
        return joiners

    def add(self, members: list[Member]) -> None:
        """New members, after the others in join order."""
        for member in members:
            self.members[member.name] = member
        self.expected = len(self.members)

    def remove(self, names: list[str]) -> None:
        """Members that have left."""
        for name in names:
            self.members.pop(name, None)
        self.expected = len(self.members)

    def lost(self, conn: Any) -> str | None:
        """The control connection ``conn`` is gone: whose it was (now neither up nor ready)."""
        for member in (*self.members.values(), *self.joining.values()):
            if member.conn is conn:
                member.conn = None
                member.ready = False
                return member.name
        return None

    def of(self, conn: Any) -> Member | None:
        """The member whose control connection is ``conn``."""
        for member in (*self.members.values(), *self.joining.values()):
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
        self.expected = len(self.members)
