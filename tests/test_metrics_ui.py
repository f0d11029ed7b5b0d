"""``metrics_ui`` as a process: its command line, a real cluster's stats, and a real browser.

The UI runs as ``python -m metrics_ui`` on ephemeral ports read from its first
line; the cluster is the README's (``clusterhelp.Cluster``) with ``--metrics``
pointed at the UI. The browser test drives Debian's headless Chromium through
chromedriver's WebDriver HTTP API (standard library only) and reads back what
the page computed from its own charts. Every wait is for a condition against a
deadline; failures print every child's output.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from clusterhelp import Cluster
from toolhelp import DEADLINE, Tool, _Collector, wait_until

REPO = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
BANNER = re.compile(rb"Metrics UI listening for stats on (\S+):(\d+), page at (http://\S+/)\n")
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",
]


class UI(Tool):
    """``python -m metrics_ui`` with collected output (this checkout's package, from any cwd)."""

    def __init__(self, *args: str, cwd=None) -> None:
        self.args = args
        path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, PYTHONPATH=path)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "metrics_ui", *args], cwd=cwd, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self._out = _Collector(self.proc.stdout)
        self._err = _Collector(self.proc.stderr)
        match = BANNER.search(self.wait_stdout(lambda out: BANNER.search(out) is not None))
        self.stats_port = int(match.group(2))
        self.url = match.group(3).decode()

    def api(self, path: str = "summary") -> dict:
        with urllib.request.urlopen(f"{self.url}api/{path}", timeout=5) as response:
            return json.loads(response.read())


def start_ui(tmp_path, stats_port: int = 0) -> UI:
    return UI("--listen", f"127.0.0.1:{stats_port}", "--http", "127.0.0.1:0", cwd=tmp_path)


# -- the command line ------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_prints_its_real_ports_and_exits_0_on_a_signal(tmp_path, sig):
    with start_ui(tmp_path) as ui:
        assert ui.stats_port > 0 and ui.url.startswith("http://127.0.0.1:")
        assert ui.api()["workers"] == {}
        assert ui.stop(sig) == 0, ui.report()


def test_help_and_usage_errors(tmp_path):
    helped = subprocess.run(
        [sys.executable, "-m", "metrics_ui", "--help"], cwd=REPO, capture_output=True, text=True,
        timeout=DEADLINE,
    )  # fmt: skip
    assert helped.returncode == 0 and "--listen HOST:PORT" in helped.stdout, helped
    assert "127.0.0.1:5001" in helped.stdout and "127.0.0.1:4000" in helped.stdout
    for args, error in [
        (["--listen", "5001"], "Error: --listen expects HOST:PORT, got '5001'"),
        (["--http=localhost:99999"], "Error: --http expects HOST:PORT, got 'localhost:99999'"),
        (["--bogus"], "Error: unknown option --bogus"),
        (["extra"], "Error: unexpected argument 'extra'"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "metrics_ui", *args], cwd=REPO, capture_output=True,
            text=True, timeout=DEADLINE,
        )  # fmt: skip
        assert result.returncode == 1, result
        assert result.stderr.splitlines()[0] == error, result.stderr
        assert result.stderr.splitlines()[1].startswith("Usage: metrics_ui")


def test_a_taken_port_is_one_error_line_and_exit_1(tmp_path):
    with start_ui(tmp_path) as first:
        result = subprocess.run(
            [sys.executable, "-m", "metrics_ui", "--listen", f"127.0.0.1:{first.stats_port}",
             "--http", "127.0.0.1:0"], cwd=REPO, capture_output=True, text=True, timeout=DEADLINE,
        )  # fmt: skip
        assert result.returncode == 1, result
        assert result.stderr.startswith("Error: cannot listen:"), result.stderr


# -- with a real cluster ---------------------------------------------------------------------


def start_sender(cluster: Cluster, messages: int, per_second: int) -> Tool:
    """The README's sender at a steady pace: batches of 50 every 50/per_second s.

    ``messages`` must not be 0 or 1 modulo 12: sequence_window emits every
    multiple of 12 with its next two values, so such a run would end in windows
    for values that were never sent.
    """
    assert messages % 12 not in (0, 1), messages
    interval_ns = 50 * 1_000_000_000 // per_second
    return Tool(
        "sender", "-h", f"127.0.0.1:{cluster.in_port}", "-m", str(messages), "-y", "-g", "12",
        "-u", "-w", "-s", "50", "-i", str(interval_ns), cwd=cluster.dir,
    )  # fmt: skip


def totals_reached(ui: UI, messages: int) -> bool:
    workers = ui.api()["workers"]
    return (
        workers.keys() == {"initializer", "worker-2"}
        and workers["initializer"]["messages"] == messages
        and workers["worker-2"]["messages"] == messages // 2
        and workers["initializer"]["messages_out"] == messages // 2
        and workers["worker-2"]["messages_out"] == messages // 2
    )


def finish(cluster: Cluster, sender: Tool, messages: int, *tools: Tool) -> None:
    """The sender finishes, every window arrives and validates, and the cluster stops cleanly."""
    report = lambda: "\n".join([cluster.report(), *(t.report() for t in tools)])  # noqa: E731
    assert sender.wait(DEADLINE) == 0, sender.report() + report()
    assert len(cluster.wait_windows(messages)) == messages, report()
    verdict = cluster.validate(messages)
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr + report().encode()


def test_a_ui_stopped_and_started_again_mid_run_picks_the_stream_up(tmp_path):
    messages = 5000
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(start_ui(tmp_path))
        cluster = stack.enter_context(Cluster(tmp_path))
        cluster.metrics = f"127.0.0.1:{first.stats_port}"
        cluster.start()
        sender = stack.enter_context(start_sender(cluster, messages, per_second=1000))
        report = lambda: "\n".join([cluster.report(), first.report(), sender.report()])  # noqa: E731

        def both_counting() -> bool:
            workers = first.api()["workers"]
            return len(workers) == 2 and all(w["messages"] > 0 for w in workers.values())

        wait_until(both_counting, DEADLINE, "the first UI to count both workers")
        seen = {name: w["messages"] for name, w in first.api()["workers"].items()}
        assert first.stop(signal.SIGTERM) == 0, report()
        logged = first.stderr.decode()
        assert "Stats from initializer (pid" in logged and "Stats from worker-2 (pid" in logged
        windows = len(cluster.windows())
        wait_until(lambda: len(cluster.windows()) >= windows + 200, DEADLINE,
                   "the cluster to carry on without a metrics receiver")  # fmt: skip
        second = stack.enter_context(start_ui(tmp_path, stats_port=first.stats_port))

        def picked_up() -> bool:
            workers = second.api()["workers"]
            return workers.keys() == seen.keys() and all(
                w["stream"]["connections"] >= 2 and w["messages"] > seen[name]
                for name, w in workers.items()
            )

        wait_until(picked_up, DEADLINE, "the restarted UI to get both workers' stream again")
        finish(cluster, sender, messages, second)
        wait_until(lambda: totals_reached(second, messages), DEADLINE,
                   "the final totals of both workers")  # fmt: skip
        assert cluster.shutdown() == {"initializer": 0, "worker-2": 0}, cluster.report()
        summary = second.api()  # after the run: both workers, with their last totals
        assert summary["workers"].keys() == {"initializer", "worker-2"}
        assert summary["workers"]["initializer"]["messages"] == messages
        assert summary["pipelines"]["Sequence Window"]["messages_out"] == messages
        assert second.stop(signal.SIGTERM) == 0, second.report()


# -- in a real browser -----------------------------------------------------------------------


class Browser:
    """Headless Debian Chromium under chromedriver, spoken to with WebDriver's JSON over HTTP."""

    def __init__(self, profile: pathlib.Path) -> None:
        self.driver = subprocess.Popen(
            [CHROMEDRIVER, "--port=0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._out = _Collector(self.driver.stdout)
        self._err = _Collector(self.driver.stderr)
        started = re.compile(rb"started successfully on port (\d+)")
        self._out.wait_for(lambda out: started.search(out) is not None, DEADLINE)
        match = started.search(bytes(self._out.data))
        assert match, self.report()
        self.base = f"http://127.0.0.1:{int(match.group(1))}"
        self.session = ""
        options = {"binary": CHROMIUM, "args": [*CHROME_FLAGS, f"--user-data-dir={profile}"]}
        capabilities = {"browserName": "chrome", "goog:chromeOptions": options}
        value = self.request("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})
        self.session = f"/session/{value['sessionId']}"
        # --window-size includes the window's frame; make the page itself 1280 x 900
        metrics = {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}
        self.cdp("Emulation.setDeviceMetricsOverride", metrics)

    def call(self, method: str, path: str, body: dict | None = None):
        """A command of this browser's session."""
        return self.request(method, self.session + path, body)

    def cdp(self, command: str, params: dict):
        """A DevTools command, through chromedriver's pass-through."""
        return self.call("POST", "/goog/cdp/execute", {"cmd": command, "params": params})

    def request(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=DEADLINE) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as err:
            raise AssertionError(
                f"WebDriver {method} {path}: {err.read()!r}\n{self.report()}"
            ) from None

    def open(self, url: str) -> None:
        self.call("POST", "/url", {"url": url})

    def run(self, script: str):
        return self.call("POST", "/execute/sync", {"script": script, "args": []})

    def screenshot(self, path: pathlib.Path) -> bytes:
        png = base64.b64decode(self.call("GET", "/screenshot"))
        path.write_bytes(png)
        return png

    def report(self) -> str:
        out, err = bytes(self._out.data)[-2000:], bytes(self._err.data)[-2000:]
        return f"--- chromedriver ---\n{out!r}\n{err!r}"

    def close(self) -> None:
        if self.session:
            with contextlib.suppress(Exception):
                self.call("DELETE", "")
        if self.driver.poll() is None:
            self.driver.terminate()
            try:
                self.driver.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                self.driver.kill()
                self.driver.wait(DEADLINE)


# What the page's worker chart shows, read back from its legend (computed from the chart data).
WORKER_LINES = """
return [...document.querySelectorAll('#legend-workers tr')].map(r => ({
  name: r.dataset.label, current: r.dataset.current, peak: r.dataset.peak}));
"""
PAGE_STATE = """
const banner = document.getElementById('banner');
const lines = (id) => [...document.querySelectorAll(id + ' tr')].map(r => ({
  name: r.dataset.label, current: r.dataset.current, peak: r.dataset.peak}));
return {
  polls: Number(document.body.dataset.polls || 0),
  status: document.getElementById('status').dataset.state,
  banner: banner.hidden ? '' : banner.textContent,
  pipelines: lines('#legend-pipelines'), steps: lines('#legend-steps'),
  latency: [...document.querySelectorAll('#latency-charts .latency')].map(b => ({
    pipeline: b.dataset.pipeline, p99: b.dataset.p99})),
  rows: [...document.querySelectorAll('#workers tbody tr')].map(r => r.dataset.worker),
  canvases: [...document.querySelectorAll('canvas')].filter(c => c.width > 0).length,
};
"""


def wait_for_page(browser: Browser, predicate, what: str, timeout: float = DEADLINE) -> None:
    try:
        wait_until(predicate, timeout, what)
    except AssertionError as err:
        raise AssertionError(
            f"{err}\npage: {browser.run(PAGE_STATE)}\n{browser.report()}"
        ) from None


def current_rates(browser: Browser) -> dict[str, float]:
    return {line["name"]: float(line["current"] or 0) for line in browser.run(WORKER_LINES)}


# In CI the browser must be there (make test installs it): a skip would hide a missing step.
@pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)) and not os.environ.get("CI"),
    reason=f"Debian's chromium and chromium-driver are not installed ({CHROMIUM}, {CHROMEDRIVER}); "
    "`make test` installs them when run as root",
)
def test_the_page_charts_both_workers_live_in_a_real_browser(tmp_path):
    messages = 8000
    with contextlib.ExitStack() as stack:
        ui = stack.enter_context(start_ui(tmp_path))
        cluster = stack.enter_context(Cluster(tmp_path))
        cluster.metrics = f"127.0.0.1:{ui.stats_port}"
        cluster.start()
        browser = Browser(tmp_path / "chromium-profile")
        stack.callback(browser.close)
        report = lambda: "\n".join([cluster.report(), ui.report(), browser.report()])  # noqa: E731
        browser.open(ui.url)  # loaded once, before any traffic: everything after is live updates
        wait_for_page(browser, lambda: browser.run(PAGE_STATE)["polls"] >= 1, "the first poll")
        assert not any(current_rates(browser).values()), report()  # idle: no line above zero
        sender = stack.enter_context(start_sender(cluster, messages, per_second=1000))

        def both_flowing() -> bool:
            rates = current_rates(browser)
            return set(rates) == {"initializer", "worker-2"} and all(r > 0 for r in rates.values())

        wait_for_page(browser, both_flowing, "the worker chart to show both workers above zero")

        def steady() -> bool:  # ~1000 msgs/s enter the initializer, half go on to worker-2
            rates = current_rates(browser)
            return 500 < rates["initializer"] < 2000 and 250 < rates["worker-2"] < 1000

        wait_for_page(browser, steady, "the worker chart to show the sender's steady rates")
        state = browser.run(PAGE_STATE)
        png = browser.screenshot(tmp_path / "page.png")
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000, report()
        assert state["status"] == "ok" and state["banner"] == "", state
        assert state["rows"] == ["initializer", "worker-2"], state
        assert state["canvases"] >= 4, state  # three line charts and a latency chart
        pipeline = {line["name"]: line for line in state["pipelines"]}
        assert float(pipeline["Sequence Window in"]["peak"]) > 0, state
        assert float(pipeline["Sequence Window out"]["peak"]) > 0, state
        assert any(float(line["peak"] or 0) > 0 for line in state["steps"]), state
        assert state["latency"][0]["pipeline"] == "Sequence Window", state
        assert int(state["latency"][0]["p99"]) > 0, state
        finish(cluster, sender, messages, ui)
