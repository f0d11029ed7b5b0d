"""The error policy for calls into user code, shared by the runner and the test driver.

Every place that calls an application object (decoder, computations, partition
functions, state builders, encoders, serialize) reports its failures here, so
that a raising or misbehaving callback is treated the same everywhere: the
first failure of each callback prints in full with its traceback, later ones
are counted and summarised, and the message is dropped. The in-process driver
can instead ask for failures to be raised as :class:`UserCallbackError`.
A ``SystemExit`` from user code is never swallowed: a line names the callback
and the exit goes on; a ``KeyboardInterrupt`` goes on untouched.

Every call into user code has the same two lines around it, ``except
BaseException as err: callbacks.failed(name, err, ...)``, and
:meth:`Callbacks.failed` is the whole policy. (A wrapper function around each
call would say it once more briefly, but it costs a Python call per message
and callback on the hot path.)
"""

from __future__ import annotations

import sys
import time
import traceback
from collections import Counter
from typing import Any, TextIO

from machida.app.python2 import PORTING_GUIDE
from machida.errors import ApplicationError, UserCallbackError

RAISED = "raised"
INVALID = "invalid result"
UNKNOWN_KEY = "key not in list"

# How often repeated failures are summarised (machida printed every one).
SUMMARY_INTERVAL_S = 10.0
# Invalid results are shown with their repr cut to this many characters.
REPR_LIMIT = 200
# Keys of the list shown when no key of a partition function has matched it.
KEYS_SHOWN = 3


def label(obj: Any, method: str) -> str:
    """``<Class>.<method>`` for a user object (or class) and a method name."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__name__}.{method}"


def fn_label(fn: Any) -> str:
    """``<module>.<function>`` for a module-level function such as ``serialize``."""
    module = getattr(fn, "__module__", None) or "?"
    return f"{module.rsplit('.', 1)[-1]}.{getattr(fn, '__name__', '?')}"


def no_key_matched(key: Any, keys: tuple) -> str:
    """Why no key matches yet: ``No key has matched yet: int 97 vs a key list of bytes (...)``."""
    types = sorted({type(k).__name__ for k in keys})
    shown = ", ".join(short_repr(k) for k in keys[:KEYS_SHOWN])
    more = ", ..." if len(keys) > KEYS_SHOWN else ""
    text = (
        f"No key has matched yet: {type(key).__name__} {short_repr(key)} vs a key list of "
        f"{' and '.join(types)} ({shown}{more})"
    )
    if type(key).__name__ not in types:
        text += f"; see {PORTING_GUIDE} on keys"
    return text + "."


def short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as err:  # a user __repr__ may itself raise
        text = f"<unrepresentable {type(value).__name__}: {err!r}>"
    return text if len(text) <= REPR_LIMIT else text[: REPR_LIMIT - 3] + "..."


def build_state(builder: Any, what: str, callbacks: Callbacks) -> Any:
    """A new state from ``builder.build()``; if it raises, the :class:`ApplicationError`
    naming the builder and ``what`` it was building (nothing can run without the state)."""
    try:
        return builder.build()
    except BaseException as err:
        name = label(builder, "build")
        callbacks.fatal(name, err)
        raise ApplicationError(
            f"{name}() raised {type(err).__name__}: {err} while building {what}"
        ) from err


def serialized(data: Any) -> bytes | None:
    """What the module's ``serialize`` returned, as bytes; ``None`` unless it is bytes-like."""
    if data.__class__ is bytes:
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    return None


class Callbacks:
    """Counts and reports failed user calls for one worker.

    ``errors="log"`` (the runner's policy) prints and counts; ``errors="raise"``
    (a choice of the test driver) raises :class:`UserCallbackError` chained to
    the user's exception. :attr:`counters` maps ``(reason, "<Class>.<method>")``
    to the number of dropped messages.
    """

    def __init__(self, worker: str, errors: str = "log", stream: TextIO | None = None) -> None:
        if errors not in ("log", "raise"):
            raise ValueError(f"errors must be 'log' or 'raise', not {errors!r}")
        self.worker = worker
        self.errors = errors
        self._stream = stream
        self.counters: Counter[tuple[str, str]] = Counter()
        self._shown: set[str] = set()
        self._warned_states: set[str] = set()
        self._summarised: dict[tuple[str, str], int] = {}
        self._last_summary = time.monotonic()

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def _where(self, pipeline: str, context: str) -> str:
        extra = f", {context}" if context else ""
        return f"[pipeline '{pipeline}', worker '{self.worker}'{extra}]"

    def failed(self, name: str, err: BaseException, pipeline: str, context: str = "") -> None:
        """The user callback ``name`` raised ``err`` while handling a message of ``pipeline``:
        an Exception drops that message (:meth:`raised`); anything else goes on
        (:meth:`fatal`)."""
        self.fatal(name, err)
        self.raised(name, err, pipeline, context)

    def fatal(self, name: str, err: BaseException) -> None:
        """Raise ``err`` again unless it is an Exception: a SystemExit from ``name`` is named
        on stderr first and then ends the process, as in machida; a KeyboardInterrupt (or any
        other BaseException) goes on untouched."""
        if isinstance(err, Exception):
            return
        if isinstance(err, SystemExit):
            self.exiting(name, err)
        raise err

    def raised(self, name: str, exc: BaseException, pipeline: str, context: str = "") -> None:
        """``name`` raised ``exc``; the message it was handling is dropped."""
        text = f"{name}() raised {type(exc).__name__}: {exc}  {self._where(pipeline, context)}"
        if self.errors == "raise":
            raise UserCallbackError(text, name) from exc
        self._count(RAISED, name, "ERROR: " + text, exc)

    def invalid(self, name: str, result: Any, pipeline: str, context: str = "") -> None:
        """``name`` returned something the API does not allow; the message is dropped."""
        text = (
            f"{name}() returned {type(result).__name__}: {short_repr(result)}  "
            f"{self._where(pipeline, context)}"
        )
        if self.errors == "raise":
            raise UserCallbackError(text, name)
        self._count(INVALID, name, "ERROR: " + text, None)

    def unknown_key(self, name: str, key: Any, state_name: str, unmatched: tuple = ()) -> None:
        """A partition function chose a key outside the state's key list.

        ``unmatched`` is the key list when no key has matched it yet: the warning
        then also compares the key's type with the list's (int 97 vs bytes).
        """
        self.counters[(UNKNOWN_KEY, name)] += 1
        if state_name in self._warned_states:
            return
        self._warned_states.add(state_name)
        line = (
            f"WARNING: {name} returned key {short_repr(key)} which is not in the key list "
            f"of state '{state_name}'; message dropped. Further drops are only counted."
        )
        if unmatched:
            line += " " + no_key_matched(key, unmatched)
        print(line, file=self.stream, flush=True)

    def bad_frame(
        self, name: str, length: Any, pipeline: str, peer: str, exc: BaseException | None
    ) -> None:
        """``payload_length`` gave a length the framing cannot trust; the connection closes."""
        if exc is not None:
            shown = f"{type(exc).__name__}: {exc}"
            line = f"ERROR: {name}() raised {shown} [pipeline '{pipeline}', peer {peer}]"
        else:
            line = f"ERROR: {name}() gave invalid payload length {short_repr(length)}"
            line += f" [pipeline '{pipeline}', peer {peer}]"
        if self.errors == "raise":
            raise UserCallbackError(line[len("ERROR: ") :], name) from exc
        print(line + "; connection closed", file=self.stream, flush=True)
        if exc is not None:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=self.stream)

    def exiting(self, name: str, exc: SystemExit) -> None:
        """A user call raised SystemExit: say which one before the process exits."""
        print(f"ERROR: {name}() raised SystemExit({exc.code!r}); exiting", file=self.stream)
        self.stream.flush()

    def _count(self, reason: str, name: str, line: str, exc: BaseException | None) -> None:
        self.counters[(reason, name)] += 1
        if name in self._shown:
            return
        self._shown.add(name)
        print(line, file=self.stream)
        if exc is not None:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=self.stream)
        self.stream.flush()

    def summary_lines(self) -> list[str]:
        """Lines for the counters that grew since the last summary (totals so far)."""
        lines = []
        for (reason, name), n in sorted(self.counters.items()):
            if self._summarised.get((reason, name)) != n:
                self._summarised[(reason, name)] = n
                lines.append(f"machida: {n} message(s) dropped: {reason} ({name})")
        return lines

    def summarise(self, force: bool = False) -> None:
        """Print the summary when forced (at exit) or at most every ten seconds."""
        now = time.monotonic()
        if not force and now - self._last_summary < SUMMARY_INTERVAL_S:
            return
        self._last_summary = now
        for line in self.summary_lines():
            print(line, file=self.stream)
        self.stream.flush()


def step_name(obj: Any) -> str:
    """A step's name for metrics: its ``name()`` if it has one (asked once), else its class."""
    name = getattr(obj, "name", None)
    if callable(name):
        try:
            return str(name())
        except Exception:
            pass
    return type(obj).__name__


def as_bytes(data: Any) -> bytes | None:
    """An encoder's result as bytes: bytes-likes as they are, ASCII text encoded."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, str):
        try:
            return data.encode("ascii")
        except UnicodeEncodeError:
            return None
    return None
