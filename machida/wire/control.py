"""Sans-I/O codec for the control channel between our own workers, with its typed messages.

The control channel carries the few messages that organise a cluster: a
worker's :class:`Hello` (name, listener addresses, the lines of its topology
fingerprint), the initializer's :class:`Refused` or :class:`Members` (the
member list in join order, type ``topology``), :class:`Ready`, and the clean-shutdown conversation
(:class:`ShutdownRequest`, :class:`Poll`/:class:`Counts`, :class:`Finish`,
:class:`Finished`, :class:`Abort`). They are rare, so each is a small JSON
object in a ``u32be length | payload`` frame; the format is this project's own
(machida.md leaves it open):

| type | from → to |
|---|---|
| ``hello`` | worker → initializer (a joiner: → any worker) |
| ``join_via`` | worker → joiner |
| ``refused`` | initializer → worker |
| ``topology`` (:class:`Members`) | initializer → worker |
| ``ready``, ``migrated`` | worker → initializer |
| ``resume``, ``leave`` | initializer → worker |
| ``shutdown_request``, ``shrink_request`` | worker → initializer |
| ``shrink_reply`` | initializer → worker |
| ``poll`` / ``counts`` | initializer ↔ worker |
| ``finish`` / ``finished`` | initializer ↔ worker |
| ``abort`` | initializer → worker |
| ``rotate_log`` | any → owner |

Each message's fields are those of its class below; a field with a default may
be left out (older workers did not send it).

:class:`ControlDecoder` turns bytes into these messages and checks every field
of each against its declared type (an address is ``[host, port]``): a message
that is not one of them, or whose fields are wrong, is refused by the codec
like a bad frame, so a handler only ever sees a well-formed message.
:class:`ControlHandler` is what a control connection's messages go to (a
cluster role); :class:`ControlLink` is that connection as the handler sees it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol, Union

from machida.errors import FrameError
from machida.wire.framing import FrameDecoder, encode_frame

# Control messages are small; anything near this size means a confused peer.
MAX_CONTROL_FRAME = 1024 * 1024


Address = tuple[str, int]


@dataclass(frozen=True)
class Worker:
    """One member of a :class:`Members` message: its name and listener addresses."""

    name: str
    control: Address
    data: Address


@dataclass(frozen=True)
class Hello:
    """A worker says who it is; ``join`` is how many workers join a running cluster together
    with it (``--join``, its ``--worker-count``), 0 for one that forms the cluster or rejoins."""

    TYPE: ClassVar[str] = "hello"
    name: str
    control: Address
    data: Address
    plan: tuple[str, ...]
    rejoin: bool = False
    join: int = 0


@dataclass(frozen=True)
class JoinVia:
    """A worker asked to join a running cluster through another worker: the initializer's
    control address, where it joins."""

    TYPE: ClassVar[str] = "join_via"
    initializer: Address


@dataclass(frozen=True)
class Refused:
    TYPE: ClassVar[str] = "refused"
    reason: str


@dataclass(frozen=True)
class Members:
    """The member list in join order and the placement of the keys (``owners``: the owner of
    each key index, per state), the ``version``-th. While ``changing``, every worker routes
    by it and hands over what it holds and no longer owns, then says :class:`Migrated`; the
    ``leaving`` workers (listed in ``workers`` until they are gone) hand over everything."""

    TYPE: ClassVar[str] = "topology"
    workers: tuple[Worker, ...]
    version: int = 1
    owners: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    changing: bool = False
    leaving: tuple[str, ...] = ()


@dataclass(frozen=True)
class Migrated:
    """A worker has handed over every key it no longer owns in placement ``version``, and
    each is acknowledged (durable, with resilience) by its new owner."""

    TYPE: ClassVar[str] = "migrated"
    name: str
    version: int


@dataclass(frozen=True)
class Resume:
    """Placement ``version`` is complete and recorded: process messages again."""

    TYPE: ClassVar[str] = "resume"
    version: int


@dataclass(frozen=True)
class Leave:
    """To a worker that left in placement ``version``: drain, remove its files, exit 0."""

    TYPE: ClassVar[str] = "leave"
    version: int


@dataclass(frozen=True)
class ShrinkRequest:
    """A shrink asked on a worker's external channel, for the initializer to decide."""

    TYPE: ClassVar[str] = "shrink_request"
    request: int
    text: str


@dataclass(frozen=True)
class ShrinkReply:
    """The initializer's answer to a :class:`ShrinkRequest`: an external message to pass on."""

    TYPE: ClassVar[str] = "shrink_reply"
    request: int
    msg_id: int
    text: str


@dataclass(frozen=True)
class Ready:
    TYPE: ClassVar[str] = "ready"
    name: str


@dataclass(frozen=True)
class ShutdownRequest:
    TYPE: ClassVar[str] = "shutdown_request"
    reason: str = ""


@dataclass(frozen=True)
class Poll:
    """The initializer asks for a worker's counters (``shutdown``: it is stopping)."""

    TYPE: ClassVar[str] = "poll"
    round: int
    shutdown: bool = True


@dataclass(frozen=True)
class Counts:
    TYPE: ClassVar[str] = "counts"
    round: int
    sent: int
    applied: int
    backlog: int


@dataclass(frozen=True)
class Finish:
    TYPE: ClassVar[str] = "finish"


@dataclass(frozen=True)
class Finished:
    TYPE: ClassVar[str] = "finished"
    name: str
    code: int


@dataclass(frozen=True)
class Abort:
    TYPE: ClassVar[str] = "abort"
    reason: str = ""


@dataclass(frozen=True)
class RotateLog:
    TYPE: ClassVar[str] = "rotate_log"
    worker: str


ControlMessage = Union[
    Hello, JoinVia, Refused, Members, Ready, ShutdownRequest, Poll, Counts, Finish, Finished,
    Abort, RotateLog, Migrated, Resume, Leave, ShrinkRequest, ShrinkReply,
]  # fmt: skip
MESSAGES: dict[str, type] = {
    cls.TYPE: cls
    for cls in (Hello, JoinVia, Refused, Members, Ready, ShutdownRequest, Poll, Counts, Finish,
                Finished, Abort, RotateLog, Migrated, Resume, Leave, ShrinkRequest, ShrinkReply)
}  # fmt: skip


class ControlLink(Protocol):
    """One control connection, as a handler sees it."""

    peer: str

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class ControlHandler(Protocol):
    """What a control connection's events go to (a cluster role)."""

    def on_open(self, conn: ControlLink) -> None: ...

    def on_message(self, conn: ControlLink, message: ControlMessage) -> None: ...

    def on_close(self, conn: ControlLink) -> None: ...


def encode(message: ControlMessage) -> bytes:
    """One control message as a frame."""
    fields = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    return encode_frame(json.dumps({"type": message.TYPE, **_plain(fields)}).encode("utf-8"))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    return value


class ControlDecoder:
    """Turns control-channel bytes into typed messages, all the complete ones of a read.

    A frame that is too long, not JSON, not an object naming a known ``type``, or
    one whose fields are missing or of the wrong kind sets :attr:`error`; the
    messages before it are still returned, and later feeds return nothing.
    """

    __slots__ = ("_frames", "error")

    def __init__(self) -> None:
        self._frames = FrameDecoder(max_length=MAX_CONTROL_FRAME, min_length=2)
        self.error: FrameError | None = None

    def feed(self, data: bytes) -> list[ControlMessage]:
        if self.error is not None:
            return []
        messages = []
        for frame in self._frames.feed(data):
            try:
                messages.append(decode(frame))
            except FrameError as err:
                self.error = err
                return messages
        if self._frames.error is not None:
            self.error = self._frames.error
        return messages


def decode(frame: bytes) -> ControlMessage:
    """One control message from its payload; FrameError says what is wrong with it."""
    try:
        obj = json.loads(frame)
    except (ValueError, RecursionError) as err:  # RecursionError: nested too deep
        raise FrameError(f"control message is not JSON: {err}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise FrameError(f"control message has no type: {obj!r:.80}")
    cls = MESSAGES.get(obj["type"])
    if cls is None:
        raise FrameError(f"unknown control message type {obj['type']!r:.40}")
    return _build(cls, obj, f"{obj['type']!r} message")


def _build(cls: type, obj: dict, what: str) -> Any:
    values = {}
    for field in dataclasses.fields(cls):
        if field.name not in obj:
            if field.default is field.default_factory is dataclasses.MISSING:
                raise FrameError(f"malformed {what}: no {field.name!r}")
            continue
        value = _CHECKS[str(field.type)](obj[field.name])  # a string: annotations are postponed
        if value is _BAD:
            raise FrameError(f"malformed {what}: {field.name!r} is {obj[field.name]!r:.80}")
        values[field.name] = value
    return cls(**values)


# Each declared field type, as a reader of the JSON value: the value (lists become tuples),
# or _BAD. JSON's true is not an int here, although Python's bool is one.
_BAD = object()


def _kind(kind: type) -> Callable[[Any], Any]:
    def read(v: Any) -> Any:
        if isinstance(v, bool) and kind is not bool:
            return _BAD
        return v if isinstance(v, kind) else _BAD

    return read


def _address(v: Any) -> Any:
    ok = isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)
    return (v[0], v[1]) if ok and _kind(int)(v[1]) is not _BAD else _BAD


def _tuple_of(item: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def read(v: Any) -> Any:
        if not isinstance(v, list):
            return _BAD
        items = tuple(map(item, v))
        return _BAD if _BAD in items else items

    return read


def _worker(v: Any) -> Any:
    if not isinstance(v, dict):
        return _BAD
    try:
        return _build(Worker, v, "member entry")
    except FrameError:
        return _BAD


def _owners(v: Any) -> Any:
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        return _BAD
    owners = {name: _tuple_of(_kind(str))(value) for name, value in v.items()}
    return _BAD if _BAD in owners.values() else owners


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "str": _kind(str),
    "int": _kind(int),
    "bool": _kind(bool),
    "Address": _address,
    "tuple[str, ...]": _tuple_of(_kind(str)),
    "tuple[Worker, ...]": _tuple_of(_worker),
    "dict[str, tuple[str, ...]]": _owners,
}
