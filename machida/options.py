"""Command-line options in the Pony style shared by machida and the giles tools.

Wallaroo's programs parsed their flags with one small Pony library, and its
rules carry over here so that old command lines keep working: ``--opt value``
or ``--opt=value``; ``-x value`` or ``-xvalue``; a separate value never starts
with ``-``; integers take ``_`` separators and ``0x``/``0b`` prefixes; and the
Pony runtime's own ``--pony*`` options are removed before anything else looks
at the line. Parsing is a pure function from a list of words to values; the
programs turn :class:`UsageError` into one line and their exit status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

# Pony runtime options that may take their value as the next word.
PONY_OPTIONS_WITH_VALUE = frozenset(
    {
        "--ponythreads",
        "--ponyminthreads",
        "--ponycdinterval",
        "--ponygcinitial",
        "--ponygcfactor",
        "--ponysuspendthreshold",
    }
)


class UsageError(Exception):
    """The command line is wrong; the message says what, without a prefix."""


def parse_int(text: str) -> int:
    """Read an integer the Pony way: ``1_000``, ``0x10``, ``0b101``, ``-3``."""
    cleaned = text.replace("_", "")
    sign = 1
    if cleaned[:1] in "+-" and cleaned:
        sign = -1 if cleaned[0] == "-" else 1
        cleaned = cleaned[1:]
    base = 10
    if cleaned[:2].lower() in ("0x", "0b"):
        base = 16 if cleaned[1] in "xX" else 2
        cleaned = cleaned[2:]
    digits = "0123456789abcdefABCDEF" if base == 16 else "01" if base == 2 else "0123456789"
    if not cleaned or cleaned.strip(digits):
        raise ValueError(f"not an integer: {text!r}")
    return sign * int(cleaned, base)


def parse_port(text: str) -> int | None:
    """A TCP port written in ASCII digits, 0..65535 (not ``²`` or ``+80``); None otherwise."""
    if text.isascii() and text.isdigit() and int(text) <= 0xFFFF:
        return int(text)
    return None


def parse_host_port(text: str) -> tuple[str, int] | None:
    """``"HOST:PORT"`` → ``(host, port)``, or None when there is no :func:`parse_port` port.

    The port follows the last colon and ``[::1]:80`` gives ``("::1", 80)``. The
    host may be empty: callers that need one, or exactly one colon, check that
    and print their own words.
    """
    host, colon, port_text = text.rpartition(":")
    port = parse_port(port_text)
    if not colon or port is None:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


@dataclass(frozen=True)
class Option:
    """One option: its long name (without dashes), short letter, and value kind.

    ``kind`` is ``"flag"`` (no value, ``False`` unless given), ``"str"`` or ``"int"``. ``minimum``
    bounds integer values. ``dest`` names the result key (the long name with
    ``-`` turned into ``_`` by default).
    """

    long: str
    short: str | None = None
    kind: str = "str"
    default: Any = None
    minimum: int | None = None
    metavar: str = ""
    help: str = ""
    dest: str = ""

    @property
    def initial(self) -> Any:
        """The value before the command line is read: flags start as ``False``."""
        if self.kind == "flag" and self.default is None:
            return False
        return self.default

    @property
    def key(self) -> str:
        return self.dest or self.long.replace("-", "_")

    def convert(self, name: str, raw: str) -> Any:
        if self.kind == "str":
            return raw
        try:
            value = parse_int(raw)
        except ValueError:
            raise UsageError(f"option {name} needs an integer, got {raw!r}") from None
        if self.minimum is not None and value < self.minimum:
            raise UsageError(f"option {name} must be at least {self.minimum}, got {raw!r}")
        return value


def strip_pony_options(argv: list[str]) -> list[str]:
    """Remove the Pony runtime's options (``--ponythreads=1``, ``--ponynoblock``, ...)."""
    kept: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if not word.startswith("--pony"):
            kept.append(word)
            continue
        name = word.split("=", 1)[0]
        takes_next = "=" not in word and name in PONY_OPTIONS_WITH_VALUE
        if takes_next and i < len(argv) and not argv[i].startswith("-"):
            i += 1
    return kept


@dataclass
class Parsed:
    """What a command line said: option values by key, and the words left over."""

    values: dict[str, Any]
    rest: list[str]
    given: set[str]


class OptionParser:
    """Parses words against a table of :class:`Option`.

    With ``keep_unknown`` an unknown option is left in ``rest`` in its place
    (machida leaves them for the application); otherwise it is a usage error.
    Words that are not options always go to ``rest``.
    """

    def __init__(self, options: list[Option], keep_unknown: bool = False) -> None:
        self.options = options
        self.keep_unknown = keep_unknown
        self._long = {o.long: o for o in options}
        self._short = {o.short: o for o in options if o.short}

    def parse(self, argv: list[str]) -> Parsed:
        values = {o.key: o.initial for o in self.options}
        given: set[str] = set()
        rest: list[str] = []
        words = strip_pony_options(list(argv))
        i = 0
        while i < len(words):
            word = words[i]
            i += 1
            found = self._match(word)
            if found is None:
                if word.startswith("-") and len(word) > 1 and not self.keep_unknown:
                    raise UsageError(f"unknown option {word}")
                rest.append(word)
                continue
            option, name, inline = found
            if option.kind == "flag":
                if inline is not None:
                    raise UsageError(f"option {name} takes no value")
                values[option.key] = True
            else:
                if inline is None:
                    if i >= len(words) or words[i].startswith("-"):
                        raise UsageError(f"option {name} needs a value")
                    inline = words[i]
                    i += 1
                values[option.key] = option.convert(name, inline)
            given.add(option.key)
        return Parsed(values, rest, given)

    def _match(self, word: str) -> tuple[Option, str, str | None] | None:
        if word.startswith("--") and len(word) > 2:
            name, eq, value = word[2:].partition("=")
            option = self._long.get(name)
            if option is None:
                return None
            return option, "--" + name, value if eq else None
        if word.startswith("-") and len(word) >= 2 and word[1] != "-":
            option = self._short.get(word[1])
            if option is None:
                return None
            tail = word[2:]
            return option, "--" + option.long, (tail or None)
        return None

    def help_lines(self) -> list[str]:
        """One line per option, for ``--help`` output."""
        lines = []
        for o in self.options:
            short = f"-{o.short}, " if o.short else "    "
            value = f" {o.metavar}" if o.kind != "flag" else ""
            lines.append(f"  {short}--{o.long}{value}".ljust(36) + o.help)
        return lines


def run_cli(main: Callable[[list[str]], int], argv: list[str], usage: str) -> int:
    """Call ``main``; a :class:`UsageError` becomes ``Error: ...`` and the usage line, exit 1."""
    import sys

    try:
        return main(argv)
    except UsageError as err:
        print(f"Error: {err}", file=sys.stderr)
        print(usage, file=sys.stderr)
        return 1
