"""The project's exceptions, one meaning each, and how each is shown to a user.

Every message is the body alone: :func:`machida.console.error_line` adds the one
``Error: `` prefix when the line is printed, so no message starts with it. A
message that must be printed as it stands (a traceback from the user's module,
a line Wallaroo printed verbatim) is made with ``verbatim=True``.

* :class:`ApplicationError`: the application module or its action list is wrong;
  nothing can start;
* :class:`ConfigError`: a command line parses but breaks a rule (both engines);
* :class:`BindError`: a listener cannot be bound (the message names the address
  and the reason);
* :class:`FrameError`: bytes from a peer cannot be framed or trusted; that
  connection is closed and everything else goes on;
* :class:`RecoveryError`: the recovery files forbid this start;
* :class:`EventLogError`: an event log cannot be read or does not belong here;
* :class:`SecretError`: the cluster secret cannot be used;
* :class:`UserCallbackError`: a user callback failed (the in-process driver
  raises it when asked to).

Messages say what was expected and what arrived.
"""

from __future__ import annotations


class MachidaError(Exception):
    """An error whose message is for the user; ``verbatim`` ones are printed unprefixed."""

    def __init__(self, message: str = "", *, verbatim: bool = False) -> None:
        super().__init__(message)
        self.verbatim = verbatim


class ApplicationError(MachidaError):
    """The application cannot be loaded or built."""


class ConfigError(MachidaError):
    """The command line parses but breaks a rule; the message is the one line to print."""


class BindError(MachidaError):
    """A listener could not be bound."""


class FrameError(MachidaError):
    """Bytes from a peer do not form a valid frame."""

    def __init__(self, message: str, length: int | None = None) -> None:
        super().__init__(message)
        self.length = length


class RecoveryError(MachidaError):
    """The recovery files forbid this start: incomplete, unreadable, or someone else's."""


class EventLogError(MachidaError):
    """The event log cannot be used; the message names the file and the cause."""


class SecretError(MachidaError):
    """The cluster secret cannot be used."""


class UserCallbackError(MachidaError):
    """A user callback failed; the message names it and ``__cause__`` is the exception."""

    def __init__(self, message: str, callback: str) -> None:
        super().__init__(message)
        self.callback = callback
