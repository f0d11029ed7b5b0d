"""``--validation-cmp``: the records a run received against the ones expected, with no I/O.

``--expected-file`` and ``--expected-string`` hold bytes: they are compared
with the sinks' records as they were on the wire (framed records with their
length header, lines with their ``\\n``), all sinks one after the other, 50
bytes at a time as in 2017, and the first block that differs is shown.
``--expected-csv`` holds records: in ``newlines`` mode each item is one line,
in ``framed`` mode one payload (the 2017 harness compared the items with
whole frames there, header included, which could never match).
"""

from __future__ import annotations

BLOCK = 50
# Records shown in a failure message, at most.
SHOWN = 20


def compare_bytes(expected: bytes, received: bytes) -> str | None:
    """None if equal; otherwise the 2017 message naming the first 50-byte block that differs."""
    if expected == received:
        return None
    start = 0
    while expected[start : start + BLOCK] == received[start : start + BLOCK]:
        start += BLOCK
    end = min(start + BLOCK, len(expected))
    return (
        f"Validation failed in bytes {start}:{end} of expected file. Expected "
        f"{expected[start : start + BLOCK]!r} but received {received[start : start + BLOCK]!r}."
    )


def _shown(records: list[bytes]) -> str:
    items = [r.decode("utf-8", "backslashreplace") for r in records[:SHOWN]]
    more = f" and {len(records) - SHOWN} more" if len(records) > SHOWN else ""
    return f"{items!r}{more}"


def compare_records(expected: list[bytes], received: list[bytes]) -> str | None:
    """None if equal, in order; otherwise what was expected and what came."""
    if expected == received:
        return None
    first = next(
        (i for i, (e, r) in enumerate(zip(expected, received)) if e != r),
        min(len(expected), len(received)),
    )
    return (
        f"Validation failed. Expected {len(expected)} record(s), received {len(received)}; "
        f"the first difference is at record {first}. Expected {_shown(expected)} "
        f"but received {_shown(received)}."
    )
