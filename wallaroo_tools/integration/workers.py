"""The workers of an ``integration_test`` run: their ports, their command lines, their processes.

Ports follow the 2017 harness: the sources take the first free ports from
50000 upward, then the control, external and data channels take the next
three. The initializer is named ``initializer`` and gets the cluster flags;
the others are ``worker1``, ``worker2``, ... Every worker gets the same
``--in``, ``--out``, ``--metrics``, ``--control`` and ``--resilience-dir`` and
the Pony runtime flags the 2017 harness passed. A :class:`Worker` is one
process whose stdout and stderr are read together, as one log, so a waiter can
be told the moment a line appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import signal
import socket
from dataclasses import dataclass

FIRST_PORT = 50000
INITIALIZER = "initializer"
PONY_FLAGS = ("--ponythreads=1", "--ponypinasio", "--ponynoblock")
# How much of a worker's output a failure report shows.
REPORT_TAIL = 4000
# A worker that has not exited this long after SIGTERM is killed.
STOP_GRACE_S = 10.0


def is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound right now (as the 2017 harness tested it)."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Ports:
    sources: tuple
    control: int
    external: int
    data: int


def choose_ports(host: str, sources: int, first: int = FIRST_PORT) -> Ports:
    """Free ports from ``first`` upward: the sources, then control, external and data."""
    found: list[int] = []
    port = first
    while len(found) < sources + 3:
        if port > 0xFFFF:
            raise OSError(f"no {sources + 3} free ports on {host} from {first} up")
        if is_free(host, port):
            found.append(port)
        port += 1
    return Ports(tuple(found[:sources]), *found[sources:])


def worker_names(count: int) -> list[str]:
    return [INITIALIZER] + [f"worker{i}" for i in range(1, count)]


def commands(
    base: tuple, host: str, ports: Ports, outputs: str, metrics: int, res_dir: str, workers: int
) -> list[tuple[str, list[str]]]:
    """``(name, argv)`` per worker, the initializer first; ``base`` is the split ``--command``."""
    inputs = ",".join(f"{host}:{port}" for port in ports.sources)
    common = ["--in", inputs, "--out", outputs, "--metrics", f"{host}:{metrics}",
              "--control", f"{host}:{ports.control}", "--resilience-dir", res_dir]  # fmt: skip
    initializer = ["--worker-count", str(workers), "--data", f"{host}:{ports.data}",
                   "--external", f"{host}:{ports.external}", "--cluster-initializer"]  # fmt: skip
    out = []
    for name in worker_names(workers):
        extra = initializer if name == INITIALIZER else []
        out.append((name, [*base, *common, "--name", name, *extra, *PONY_FLAGS]))
    return out


class Worker:
    """One worker process; its stdout and stderr, merged, are kept and watched."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.argv = argv
        self.output = bytearray()
        self.proc: asyncio.subprocess.Process | None = None
        self.stopped_by_us = False
        self._changed = asyncio.Event()
        self._reader: asyncio.Task | None = None

    async def start(self) -> None:
        """Start the process (raises OSError when the command cannot be run)."""
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            chunk = await self.proc.stdout.read(1 << 16)
            if not chunk:
                break
            self.output += chunk
            self._changed.set()
        await self.proc.wait()
        self._changed.set()

    @property
    def exited(self) -> int | None:
        """The exit status once the process has exited and its output is read, else None."""
        if self._reader is None or not self._reader.done() or self.proc is None:
            return None
        return self.proc.returncode

    def watch(self) -> None:
        """Forget earlier news: :meth:`changed` now waits for output (or the exit) after this."""
        self._changed.clear()

    async def changed(self) -> None:
        await self._changed.wait()

    async def wait_exit(self) -> int:
        assert self._reader is not None
        await asyncio.shield(self._reader)
        return self.exited  # type: ignore[return-value]

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after :data:`STOP_GRACE_S`; the exit status (None if never run)."""
        if self.proc is None or self._reader is None:
            return None
        if self.exited is None:
            self.stopped_by_us = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._reader), STOP_GRACE_S)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
        return await self.wait_exit()

    def report(self) -> str:
        """The worker's name, exit status and the tail of its output, for a failure message."""
        status = self.exited
        state = "running" if status is None else f"exit {status}"
        text = self.output.decode("utf-8", "replace")
        if len(text) > REPORT_TAIL:
            text = "...\n" + text[-REPORT_TAIL:]
        return f"--- {self.name} ({state}): {shlex.join(self.argv)}\n{text.rstrip()}"
