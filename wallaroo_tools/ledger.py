"""What an exactly-once receiver holds: its output file and its marks, durable together.

A receiver started with ``--exactly-once`` (``data_receiver --framed
--exactly-once --output FILE``, giles ``receiver --exactly-once``) takes the
numbered output of the exactly-once sink protocol
(:mod:`machida.wire.exactly_once`). :class:`Holdings` is its pure half: the
last record of each stream it has taken (its *mark*), which records of a run
are new, and what to acknowledge on each connection. :class:`Ledger` makes
FILE and the marks durable together: new records are appended to FILE, FILE
is fsync'd, and only then is a record of the new marks and of FILE's length
appended to ``FILE.marks`` (the *journal*) and fsync'd; acknowledgements go
out after that. At start the journal is read and FILE cut back to the length
it last recorded, so FILE holds exactly what the marks say, whatever moment a
crash came at: what was cut off was never acknowledged, and the workers send
it again.

Journal: a header line ``machida-sink-marks 1\\n``, then records
``u32be length | u32be crc32 | u64be FILE length | u64be frames | u32be n |
n marks`` (a mark is ``u16be pipeline, u32be key, u64be epoch, u64be seq``),
each holding the marks that moved; a torn last record is ignored and cut off.
Past :data:`JOURNAL_LIMIT` the journal is replaced (a rename) by one record of
every mark.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from typing import BinaryIO, NamedTuple

from machida.errors import FrameError
from machida.files import fsync_directory
from machida.wire.exactly_once import OutputRun, Stream

MAGIC = b"machida-sink-marks 1\n"
_RECORD = struct.Struct(">II")
_TOTALS = struct.Struct(">QQI")
_MARK = struct.Struct(">HIQQ")
# The journal is rewritten past this size (or four times one record of every mark, if more):
# a record per commit of a few dozen bytes, so a rewrite every some ten thousand commits.
JOURNAL_LIMIT = 1024 * 1024
SUFFIX = ".marks"


class Holdings:
    """The receiver's marks (``taken``: every record accepted; ``durable``: those in FILE
    and the journal) and the streams each connection sent since its last acknowledgement."""

    __slots__ = ("_touched", "changed", "durable", "taken", "warnings")

    def __init__(self, durable: dict[Stream, int] | None = None) -> None:
        self.durable: dict[Stream, int] = dict(durable or {})
        self.taken: dict[Stream, int] = dict(self.durable)
        self.changed: set[Stream] = set()  # taken past durable
        self._touched: dict[object, set[Stream]] = {}
        self.warnings: list[str] = []  # said once each, by the shell

    def answer(self, streams: list[Stream]) -> dict[Stream, int]:
        """The durable mark of each of ``streams`` the receiver knows (the answer to a hello)."""
        return {s: self.durable[s] for s in streams if s in self.durable}

    def fresh(self, conn: object, run: OutputRun) -> list[bytes]:
        """The records of ``run`` not yet taken (:meth:`took` takes them); FrameError on a gap
        (a record past the next one of a stream this receiver knows: output would be
        missing)."""
        stream, first, values = run
        self._touched.setdefault(conn, set()).add(stream)
        mark = self.taken.get(stream)
        if mark is None:
            if first != 1:
                self.warnings.append(
                    f"WARNING: stream {stream} starts at output {first}: this receiver holds "
                    f"nothing of it (a new output file for a running cluster?)"
                )
            mark = first - 1
        elif first > mark + 1:
            raise FrameError(f"output {first} of stream {stream} arrived, but {mark + 1} "
                             f"was next: output would be missing")  # fmt: skip
        skip = mark - first + 1
        if skip >= len(values):
            return []
        return values[skip:] if skip > 0 else values

    def took(self, run: OutputRun) -> None:
        """Every record of ``run`` is taken (written to FILE, durable at the next commit)."""
        last = run.first + len(run.values) - 1
        if last > self.taken.get(run.stream, 0):
            self.taken[run.stream] = last
            self.changed.add(run.stream)

    def moved(self) -> dict[Stream, int]:
        """The marks taken past the durable ones (what the next journal record holds)."""
        return {s: self.taken[s] for s in self.changed}

    def committed(self, moved: dict[Stream, int]) -> None:
        """Those marks are durable now."""
        self.durable.update(moved)
        self.changed.difference_update(moved)

    def acks(self, conn: object) -> dict[Stream, int]:
        """The durable mark of every stream ``conn`` sent since its last acknowledgement (a
        stream with records not yet durable waits for the next commit)."""
        touched = self._touched.get(conn)
        if not touched:
            return {}
        ready = {s: self.durable[s] for s in touched if s in self.durable and s not in self.changed}
        touched.difference_update(ready)
        return ready

    def forget(self, conn: object) -> None:
        self._touched.pop(conn, None)


class Recovered(NamedTuple):
    """What a journal holds: every mark, FILE's length and frame count, and where its last
    good record ends."""

    marks: dict[Stream, int]
    length: int
    frames: int
    end: int


def encode_record(length: int, frames: int, marks: dict[Stream, int]) -> bytes:
    body = _TOTALS.pack(length, frames, len(marks))
    body += b"".join(_MARK.pack(*stream, seq) for stream, seq in marks.items())
    return _RECORD.pack(len(body), zlib.crc32(body)) + body


def read_journal(file: BinaryIO, path: str) -> Recovered:
    """Every complete record of an open journal; ValueError if it is not one."""
    size = os.fstat(file.fileno()).st_size
    if file.read(len(MAGIC)) != MAGIC:
        raise ValueError(f"{path} is not a marks journal of an exactly-once receiver")
    marks: dict[Stream, int] = {}
    length = frames = 0
    end = len(MAGIC)
    while True:
        head = file.read(_RECORD.size)
        if len(head) < _RECORD.size:
            break
        n, crc = _RECORD.unpack(head)
        body = file.read(n) if end + _RECORD.size + n <= size else b""
        if len(body) < max(n, _TOTALS.size) or zlib.crc32(body) != crc:
            break  # torn: the crash came while it was written
        length, frames, count = _TOTALS.unpack_from(body)
        for pos in range(_TOTALS.size, _TOTALS.size + count * _MARK.size, _MARK.size):
            p, key, epoch, seq = _MARK.unpack_from(body, pos)
            marks[Stream(p, key, epoch)] = seq
        end += _RECORD.size + n
    return Recovered(marks, length, frames, end)


class LedgerError(Exception):
    """FILE and its journal cannot be used (the message says why)."""


class Ledger:
    """FILE (records appended by :meth:`write`) and its journal, made durable together by
    :meth:`commit`. Opening recovers: FILE is cut back to what the journal last recorded."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.journal_path = path + SUFFIX
        self._pending: list[bytes] = []
        recovered = self._recover()
        self.marks = recovered.marks
        self.length, self.frames = recovered.length, recovered.frames
        self.file = open(path, "ab")  # noqa: SIM115 (kept open for the receiver's life)
        self.journal = open(self.journal_path, "ab")  # noqa: SIM115
        self.journal_size = self.journal.tell()

    def _recover(self) -> Recovered:
        try:
            with open(self.journal_path, "rb") as journal:
                recovered = read_journal(journal, self.journal_path)
        except FileNotFoundError:
            return self._fresh()
        except ValueError as err:
            raise LedgerError(str(err)) from None
        try:
            held = os.path.getsize(self.path)
        except FileNotFoundError:
            held = 0
        if held < recovered.length:
            raise LedgerError(f"{self.path} holds {held} bytes, but its marks "
                              f"({self.journal_path}) record {recovered.length}: it was changed "
                              f"since; remove both to start afresh")  # fmt: skip
        os.truncate(self.path, recovered.length)  # what was never acknowledged goes
        os.truncate(self.journal_path, recovered.end)
        return recovered

    def _fresh(self) -> Recovered:
        """No journal: FILE starts empty, and so does a journal of no marks."""
        with open(self.path, "wb") as file:
            os.fsync(file.fileno())
        self._replace_journal({}, 0, 0)
        return Recovered({}, 0, 0, 0)

    def _replace_journal(self, marks: dict[Stream, int], length: int, frames: int) -> None:
        temporary = self.journal_path + ".tmp"
        with open(temporary, "wb") as file:
            file.write(MAGIC + encode_record(length, frames, marks))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.journal_path)
        fsync_directory(os.path.dirname(self.journal_path) or ".")

    def write(self, data: bytes, frames: int) -> None:
        """Records for FILE (durable at the next commit)."""
        self._pending.append(data)
        self.frames += frames

    def commit(self, moved: dict[Stream, int]) -> None:
        """FILE's new records, fsync, then the journal's record of ``moved`` marks, fsync.
        OSError if the disk refuses."""
        data = b"".join(self._pending)
        self._pending = []
        if data:
            self.file.write(data)
            self.file.flush()
            os.fsync(self.file.fileno())
            self.length += len(data)
        self.marks.update(moved)
        record = encode_record(self.length, self.frames, moved)
        if self.journal_size + len(record) > max(JOURNAL_LIMIT, 4 * 22 * len(self.marks)):
            self.journal.close()
            self._replace_journal(self.marks, self.length, self.frames)
            self.journal = open(self.journal_path, "ab")  # noqa: SIM115
            self.journal_size = self.journal.tell()
            return
        self.journal.write(record)
        self.journal.flush()
        os.fsync(self.journal.fileno())
        self.journal_size += len(record)

    def close(self) -> None:
        for file in (self.file, self.journal):
            with contextlib.suppress(OSError):  # what was not written was never acknowledged
                file.close()
