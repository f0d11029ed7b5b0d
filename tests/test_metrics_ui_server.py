"""The Metrics UI server in-process: real sockets, the runtime's own metrics client, raw HTTP.

Each test runs one event loop holding both the UI and what talks to it, and
waits for conditions against a deadline. The page's files are served from
the package (the chart library there is put in place by ``make metrics-ui-install``);
the missing-library case uses a copy of the static directory without it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil

import pytest

from machida.metrics import FORMAT, MetricsClient, Stats, encode_record
from machida.options import run_cli
from metrics_ui import vendor
from metrics_ui.__main__ import USAGE, main_args, parse_address
from metrics_ui.server import MAX_REQUEST_HEAD, STATIC_DIR, MetricsUI

DEADLINE = 10.0
EPHEMERAL = ("127.0.0.1", 0)


async def until(predicate, what: str, timeout: float = DEADLINE) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def request(ui: MetricsUI, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` to the page address; the status, headers and body of the answer."""
    reader, writer = await asyncio.open_connection(*ui.http_address)
    writer.write(raw)
    data = await asyncio.wait_for(reader.read(), DEADLINE)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body) or raw.startswith(b"HEAD"), data[:300]
    return int(lines[0].split(" ")[1]), headers, body


async def get(ui: MetricsUI, path: str, method: str = "GET"):
    return await request(ui, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def started(**kwargs) -> MetricsUI:
    ui = MetricsUI(**kwargs)
    await ui.start(EPHEMERAL, EPHEMERAL)
    return ui


def test_the_page_and_its_files_are_served():
    assert vendor.installed(), "the chart library is missing: run `make metrics-ui-install`"

    async def main():
        ui = await started()
        try:
            status, headers, body = await get(ui, "/")
            assert status == 200 and headers["Content-Type"].startswith("text/html")
            assert b'<script src="/static/vendor/chart.umd.js"' in body
            assert b'<script src="/static/app.js"' in body
            assert headers["Content-Security-Policy"].startswith("default-src 'self'")
            status, headers, body = await get(ui, "/static/vendor/chart.umd.js")
            assert status == 200 and headers["Content-Type"].startswith("text/javascript")
            assert f"Chart.js v{vendor.VERSION}".encode() in body[:200]
            assert body == (STATIC_DIR / "vendor" / "chart.umd.js").read_bytes()
            for path, kind in (
                ("/static/app.js", "text/javascript"),
                ("/static/style.css", "text/css"),
            ):
                status, headers, body = await get(ui, path)
                assert status == 200 and headers["Content-Type"].startswith(kind) and body
        finally:
            await ui.close()

    run(main())


@pytest.mark.parametrize(
    "path",
    ["/nope", "/static/../server.py", "/static/vendor/../../server.py", "/static/", "//etc/passwd"],
)
def test_nothing_outside_the_list_of_files_is_served(path):
    async def main():
        ui = await started()
        try:
            status, _, body = await get(ui, path)
            assert status == 404, body
        finally:
            await ui.close()

    run(main())


def test_bad_requests_get_the_right_status_and_head_gets_no_body():
    async def main():
        ui = await started()
        try:
            status, headers, _ = await get(ui, "/api/summary", method="POST")
            assert status == 405 and headers["Allow"] == "GET, HEAD"
            status, _, _ = await request(ui, b"nonsense\r\n\r\n")
            assert status == 400
            status, _, _ = await request(ui, b"GET / SPDY/3\r\n\r\n")
            assert status == 400
            status, headers, body = await get(ui, "/", method="HEAD")
            assert status == 200 and body == b"" and int(headers["Content-Length"]) > 100
            status, _, body = await get(ui, "/api/summary?since=5")
            assert status == 200 and json.loads(body)["workers"] == {}
            # an oversized request head is dropped without an answer
            reader, writer = await asyncio.open_connection(*ui.http_address)
            writer.write(b"GET /" + b"a" * MAX_REQUEST_HEAD + b" HTTP/1.1\r\n\r\n")
            assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
            writer.close()
        finally:
            await ui.close()

    run(main())


def test_without_the_chart_library_the_page_says_to_run_make_metrics_ui_install(tmp_path):
    static = tmp_path / "static"
    shutil.copytree(STATIC_DIR, static, ignore=shutil.ignore_patterns("vendor"))
    logged: list[str] = []

    async def main():
        ui = await started(static_dir=static, log=logged.append)
        try:
            status, _, body = await get(ui, "/")
            assert status == 503 and b"make metrics-ui-install" in body
            assert vendor.VERSION.encode() in body
            status, _, body = await get(ui, "/static/vendor/chart.umd.js")
            assert status == 404 and b"make metrics-ui-install" in body
            status, _, _ = await get(ui, "/api/summary")
            assert status == 200
        finally:
            await ui.close()

    run(main())
    assert len(logged) == 1 and "chart library missing" in logged[0], logged
    assert "make metrics-ui-install" in logged[0]


def test_records_from_the_runtime_s_client_reach_the_api():
    logged: list[str] = []

    async def main():
        ui = await started(log=logged.append)
        stats = Stats("worker-7")
        pipeline = stats.pipeline("P")
        client = MetricsClient(*ui.stats_address, stats, interval=0.05)
        client.start()
        try:
            for _ in range(3):
                pipeline.messages_arrived += 50
                pipeline.messages_out += 50
                seq = stats.seq
                await until(lambda seq=seq: stats.seq > seq + 1, "two more records")

            def rate_known() -> bool:
                worker = ui.model.workers.get("worker-7")
                return worker is not None and worker.rates is not None

            await until(rate_known, "a rate for worker-7")
            status, _, body = await get(ui, "/api/summary")
            summary = json.loads(body)
            assert status == 200 and summary["stats_address"].endswith(f":{ui.stats_address[1]}")
            worker = summary["workers"]["worker-7"]
            assert worker["messages"] == 150 and worker["messages_out"] == 150
            assert worker["live"] is True and worker["stream"]["connections"] == 1
            assert summary["pipelines"]["P"]["messages_arrived"] == 150
            await until(lambda: len(ui.model.series.times) >= 2, "two ticks")
            status, _, body = await get(ui, "/api/series")
            series = json.loads(body)
            assert status == 200 and len(series["times"]) >= 2
            assert len(series["workers"]["worker-7"]) == len(series["times"])
        finally:
            await client.stop()
            await ui.close()

    run(main())
    assert logged == [f"Stats from worker-7 (pid {os.getpid()})"]


def test_a_malformed_record_is_counted_and_logged_once():
    logged: list[str] = []

    async def main():
        ui = await started(log=logged.append)
        try:
            _, writer = await asyncio.open_connection(*ui.stats_address)
            writer.write(encode_record({"format": FORMAT, "worker": "x"}))
            writer.write(encode_record({"format": FORMAT, "worker": "y", "pid": 1}))
            await writer.drain()
            await until(lambda: ui.model.rejected == 2, "two rejected records")
            writer.close()
            status, _, body = await get(ui, "/api/summary")
            assert status == 200 and json.loads(body)["rejected"] == 2
            assert json.loads(body)["workers"] == {}
        finally:
            await ui.close()

    run(main())
    assert len(logged) == 1 and "malformed" in logged[0]


@pytest.mark.parametrize("address", ["127.0.0.1:\u00b2", "[::1]:70000", ":4000", "127.0.0.1"])
def test_a_bad_address_is_one_error_and_the_usage_line(address, capsys):
    assert run_cli(main_args, ["--listen", address], USAGE) == 1
    err = capsys.readouterr().err
    assert err == f"Error: --listen expects HOST:PORT, got {address!r}\n{USAGE}\n"
    assert parse_address("http", "[::1]:0") == ("::1", 0)
