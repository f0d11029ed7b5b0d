"""The Metrics UI's two listeners on one asyncio loop: the stats receiver and a tiny HTTP server.

Workers connect to the stats address and stream records
(:func:`machida.metrics.serve_records` decodes them) into a
:class:`~metrics_ui.model.Model`; a timer ticks the model once a second. The
HTTP side answers ``GET`` and ``HEAD`` only, one request per connection:
``/`` is the page, ``/static/...`` a fixed list of files (the chart library
among them, from ``static/vendor/``, put there by ``make metrics-ui-install``),
``/api/summary`` and ``/api/series`` the model as JSON. Nothing is read from
the file system outside that list. Without the chart library the page
address answers 503 with what to run, and the start-up log says the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import sys
import time
from typing import Any, Callable

from machida.aio import within
from machida.metrics.receiver import RecordServer, serve_records
from metrics_ui import vendor
from metrics_ui.model import TICK_S, Model

STATIC_DIR = pathlib.Path(__file__).resolve().parent / "static"

# URL path -> (file under the static directory, content type)
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
    vendor.URL_PATH: (f"vendor/{vendor.FILE_NAME}", "text/javascript; charset=utf-8"),
    "/static/vendor/LICENSE.md": ("vendor/LICENSE.md", "text/plain; charset=utf-8"),
}
PAGE_PATHS = ("/", "/index.html")

# A request head larger than this, or slower than this, is dropped: browsers send ~1 KiB.
MAX_REQUEST_HEAD = 16 * 1024
REQUEST_TIMEOUT_S = 10.0
# The page says how it was loaded and who may run scripts: nothing but this server.
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    ("Referrer-Policy", "no-referrer"),
)
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


def missing_library_page(path: pathlib.Path) -> bytes:
    return (
        "<!doctype html><meta charset=utf-8><title>Metrics UI: chart library missing</title>"
        "<h1>Metrics UI: the chart library is not installed</h1>"
        f"<p>{vendor.PACKAGE} {vendor.VERSION} is expected at <code>{path}</code>.</p>"
        "<p>Run <code>make metrics-ui-install</code> (or <code>python -m metrics_ui.vendor</code>) "
        "in the project, then reload this page. The API still answers at "
        '<a href="/api/summary">/api/summary</a>.</p>'
    ).encode()


class MetricsUI:
    """The stats receiver, the model's ticker and the HTTP server, started together.

    ``clock`` (monotonic) and ``wall`` (Unix time) are the model's clocks;
    ``log`` gets one line per event worth telling an operator (a worker that
    starts reporting, a malformed record).
    """

    def __init__(
        self,
        static_dir: pathlib.Path = STATIC_DIR,
        log: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.model = Model()
        self.static_dir = static_dir
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.clock = clock
        self.wall = wall
        self.records: RecordServer | None = None
        self._listen_host = ""
        self.http: asyncio.AbstractServer | None = None
        self._ticker: asyncio.Task | None = None
        self._warned_rejected = False

    @property
    def library(self) -> pathlib.Path:
        return self.static_dir / "vendor" / vendor.FILE_NAME

    @property
    def stats_address(self) -> tuple[str, int]:
        assert self.records is not None
        return self._listen_host, self.records.port

    @property
    def http_address(self) -> tuple[str, int]:
        assert self.http is not None
        return self.http.sockets[0].getsockname()[:2]

    async def start(self, listen: tuple[str, int], http: tuple[str, int]) -> None:
        """Bind both addresses (port 0 picks one) and start ticking; OSError if one is taken."""
        self.records = await serve_records(listen[0], listen[1], self._on_record)
        self._listen_host = listen[0]
        try:
            self.http = await asyncio.start_server(
                self._serve, http[0], http[1], limit=MAX_REQUEST_HEAD
            )
        except OSError:
            self.records.close()
            raise
        if not self.library.is_file():
            self.log(
                f"WARNING: chart library missing: {self.library} not found; run "
                "`make metrics-ui-install` (or `python -m metrics_ui.vendor`). The page shows "
                "this error until then."
            )
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self.records is not None:
            self.records.close()
            await self.records.wait_closed()
        if self.http is not None:
            self.http.close()
            await self.http.wait_closed()

    # -- stats ------------------------------------------------------------------------------

    def _on_record(self, record: dict[str, Any]) -> None:
        status = self.model.ingest(record, self.clock())
        if status == "new":
            name = "".join(c if c.isprintable() else "?" for c in record["worker"])
            self.log(f"Stats from {name} (pid {record['pid']})")
        elif status == "rejected" and not self._warned_rejected:
            self._warned_rejected = True  # once: a broken sender would flood the log
            self.log("WARNING: ignoring a malformed stats record (counted in /api/summary)")

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            self.model.tick(self.clock(), self.wall())
            due += TICK_S
            # behind by more than a tick (a suspended laptop): skip ahead, don't burst
            due = max(due, loop.time())
            await asyncio.sleep(due - loop.time())

    # -- HTTP -------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await within(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
                return
            status, headers, body, head_only = self.respond(head)
            writer.write(_response(status, headers, b"" if head_only else body, len(body)))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def respond(self, head: bytes) -> tuple[int, list[tuple[str, str]], bytes, bool]:
        """Status, headers, body and whether to leave the body out (HEAD) for a request head."""
        try:
            method, target, version = head.split(b"\r\n", 1)[0].decode("ascii").split(" ")
        except (UnicodeDecodeError, ValueError):
            return (*_text(400, "bad request line\n"), False)
        if not version.startswith("HTTP/1."):
            return (*_text(400, "HTTP/1.x only\n"), False)
        if method not in ("GET", "HEAD"):
            status, headers, body = _text(405, "GET or HEAD only\n")
            return status, [*headers, ("Allow", "GET, HEAD")], body, False
        path = target.split("?", 1)[0]
        return (*self.route(path), method == "HEAD")

    def route(self, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        if path == "/api/summary":
            summary = self.model.summary(self.clock(), self.wall())
            host, port = self.stats_address
            summary["stats_address"] = f"{host}:{port}"
            return _json(summary)
        if path == "/api/series":
            return _json(self.model.series_json())
        if path in PAGE_PATHS and not self.library.is_file():
            return 503, _headers("text/html; charset=utf-8"), missing_library_page(self.library)
        if path not in FILES:
            return _text(404, f"no such page: {path}\n")
        name, content_type = FILES[path]
        try:
            body = (self.static_dir / name).read_bytes()
        except OSError:
            hint = " (run `make metrics-ui-install`)" if name.startswith("vendor/") else ""
            return _text(404, f"{name} is missing{hint}\n")
        return 200, _headers(content_type), body


def _headers(content_type: str, cache: str = "no-cache") -> list[tuple[str, str]]:
    return [("Content-Type", content_type), ("Cache-Control", cache), *SECURITY_HEADERS]


def _text(status: int, text: str) -> tuple[int, list[tuple[str, str]], bytes]:
    return status, _headers("text/plain; charset=utf-8", "no-store"), text.encode()


def _json(data: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    body = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    return 200, _headers("application/json", "no-store"), body


def _response(status: int, headers: list[tuple[str, str]], body: bytes, length: int) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS[status]}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [f"Content-Length: {length}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body
