"""Telling a Python 2 module from a broken one, when importing it raises SyntaxError.

machida of 2017 embedded CPython 2.7, so its applications are Python 2; this
runner, like Wallaroo's later machida3, runs Python 3. Most Python 2 modules
fail at the first syntax Python 3 dropped: a print or exec statement,
``except X, e:``, backticks, ``<>``, ``raise E, value``, ``0777``, ``10L`` or
``ur''``. :func:`python2_syntax` looks at the line a SyntaxError points to and
names what it found there, so the loader can say in one line that the module
looks like Python 2 and where the porting guide is. Nothing here does I/O.
"""

from __future__ import annotations

import re

PORTING_GUIDE = "docs/porting.md"

# (what the line holds, how to recognise it in the message or in the line's text)
_MESSAGES = (
    ("a print statement", "Missing parentheses in call to 'print'"),
    ("an exec statement", "Missing parentheses in call to 'exec'"),
    ("an octal literal such as 0777", "leading zeros in decimal integer literals"),
)
_LINES = (
    ("a print statement", re.compile(r"^\s*print\s+[^\s(=.,)\]}]")),
    ("'except X, e:'", re.compile(r"^\s*except\s+[^:]*,\s*[A-Za-z_]\w*\s*:")),
    ("'raise E, value'", re.compile(r"^\s*raise\s+[\w.]+\s*,")),
    ("backticks", re.compile(r"`")),
    ("the '<>' operator", re.compile(r"<>")),
    ("a long literal such as 10L", re.compile(r"\b\d+[lL]\b")),
)
_UR_STRING = re.compile(r"\b[uU][rR]['\"]")
_STRINGS = re.compile(r"(['\"]).*?(?<!\\)\1")


def python2_syntax(err: SyntaxError) -> str | None:
    """What Python 2 syntax the line of ``err`` holds (``"a print statement"``), or None."""
    message = err.msg or ""
    for what, text in _MESSAGES:
        if text in message:
            return what
    line = err.text or ""
    if _UR_STRING.search(line):
        return "a ur'' string"
    code = _STRINGS.sub('""', line)  # "<>" or a backtick inside a string is not Python 2
    for what, pattern in _LINES:
        if pattern.search(code):
            return what
    return None


def python2_hint(err: SyntaxError) -> str | None:
    """``<file> line <n> looks like Python 2 (<what>); ...`` for the loader, or None."""
    what = python2_syntax(err)
    if what is None:
        return None
    where = f"{err.filename} line {err.lineno}" if err.filename else f"line {err.lineno}"
    return (
        f"{where} looks like Python 2 ({what}); this runner runs Python 3 applications "
        f"(3.9 or later), see {PORTING_GUIDE} to port it"
    )
