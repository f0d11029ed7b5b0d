"""The runner's exceptions, one meaning each.

``ApplicationError``: the application module or its action list is wrong;
nothing can start. ``FrameError``: bytes from a peer cannot be framed; that
connection is closed and everything else goes on. ``BindError``: a listener
cannot be bound (the message names the address and the reason). ``UserCallbackError``: a
user callback raised or returned something invalid (the in-process driver
raises it when asked to). Messages say what was expected and what arrived.
"""

from __future__ import annotations


class ApplicationError(Exception):
    """The application cannot be loaded or built; the message is for the user."""


class FrameError(Exception):
    """Bytes from a peer do not form a valid frame."""

    def __init__(self, message: str, length: int | None = None) -> None:
        super().__init__(message)
        self.length = length


class BindError(Exception):
    """A listener could not be bound; the message is the line to print."""


class UserCallbackError(Exception):
    """A user callback failed; the message names it and ``__cause__`` is the exception."""

    def __init__(self, message: str, callback: str) -> None:
        super().__init__(message)
        self.callback = callback
