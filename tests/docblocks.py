"""The command blocks of the project's Markdown files, and how to run them as written.

The files are README.md, docs/*.md and examples/*/README.md.

A fenced block whose info string is ``bash`` or ``sh`` is a command block; the line before it
is an HTML comment saying how it runs (the comment does not show on a rendered page)::

    <!-- run: OPTIONS -->        run by tests/test_docs.py, as below
    <!-- not run: REASON -->     not run, for the reason given (another host, say)

OPTIONS are shell words:

``group=NAME``
    The blocks of one file with the same group run in order, in one directory and with one
    port mapping, as the shells of one reader would (default: the block on its own).
``bg``
    The block is a shell of its own, left running while the next blocks run.
``ready=TEXT``
    (bg) The next block starts once this block's output holds TEXT.
``after=TEXT``
    The block starts once the output of an earlier block of the group holds TEXT (repeatable).
``stop``
    (bg) Once the group's blocks are done, the block gets Ctrl-C (SIGINT to its process
    group); it must then exit 0. A bg block without ``stop`` must exit 0 by itself.
``expect=TEXT``
    Once the block is done, its output must hold TEXT (repeatable).
``in=DIR``
    The group runs in a copy of the checkout's DIR; ``in=.`` is the checkout itself (a
    directory of symbolic links to it, so ``make`` and ``. .venv/bin/activate`` work while
    what the commands write stays out of the checkout).
``host=A`` / ``host=B``
    The block runs on host A (198.18.0.1) or B (198.18.0.2): two network namespaces joined
    as two machines on a LAN, which share this machine's file system (needs root).
``python``
    The block is Python, run by the project's interpreter.
``file=NAME``
    The block is saved as NAME in the group's directory (a module a later block runs).

A block without ``bg`` must exit 0. Three blocks of the README have tests of their own: the
walkthrough (``<!-- walkthrough:begin -->``) runs in ``tests/test_readme.py`` and on Flink in
``tests/test_flink_readme.py``, the grow and shrink run (``<!-- autoscale:begin -->``) in
``tests/test_autoscale.py``, the exactly-once run with its kill -9s
(``<!-- exactly_once:begin -->``) in ``tests/test_exactly_once_cluster.py``; each example's
check (``<!-- test:begin -->``) runs in ``tests/test_examples.py``.

What changes in a block before it runs, and nothing else: each ``127.0.0.1:PORT`` gets a free
port (the same one for the whole group); ``machida``, ``machida-flink`` and
``integration_test`` get ``--resilience-dir`` in the test's directory, unless the block gives
one; ``make flink-cluster`` gets free ports through ``FLINK_REST_PORT`` (the port that
``127.0.0.1:8081`` became) and ``FLINK_RPC_PORT``. Commands find the project's console scripts
first on ``PATH``, and ``HOME`` is a directory of the test's own.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from toolhelp import closed_port

ROOT = Path(__file__).resolve().parent.parent
DOCS = [
    "README.md",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*/README.md")),
]
SHELL = {"bash", "sh"}
FENCE = re.compile(r"^(```+)\s*([\w-]*)\s*$")
MARK = re.compile(r"^<!--\s*(run|not run|\w+:begin)(?::\s*(.*?))?\s*-->$")
# Blocks that a test of their own runs, and the test.
RUN_ELSEWHERE = {
    "walkthrough:begin": "tests/test_readme.py",
    "autoscale:begin": "tests/test_autoscale.py",
    "exactly_once:begin": "tests/test_exactly_once_cluster.py",
    "test:begin": "tests/test_examples.py",
}
OPTIONS = {"group", "bg", "ready", "after", "stop", "expect", "in", "host", "python", "file"}
REPEATED = {"after", "expect"}
# A JVM, a Flink job and its tasks on two busy cores take the longest of anything here.
WAIT_S = 300.0
HOSTS = {"A": "198.18.0.1", "B": "198.18.0.2"}
# What a checkout's view leaves out: what the commands write, and caches.
NOT_VIEWED = {".git", ".flink", "run", "run-flink", "bench", "received.txt", "sent.txt"}


@dataclass
class Block:
    path: str  # relative to the checkout
    line: int  # of the opening fence, 1-based
    info: str
    text: str
    mark: str | None = None  # "run", "not run", a RUN_ELSEWHERE mark, or None
    detail: str = ""  # the options, or the reason
    options: dict = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def is_command(self) -> bool:
        return self.info in SHELL


def blocks(path: str) -> list[Block]:
    """Every fenced block of ``path``, with the mark on the line before it, if any."""
    lines = (ROOT / path).read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence.group(1):
            end += 1
        block = Block(path, i + 1, fence.group(2), "\n".join(lines[i + 1 : end]) + "\n")
        mark = MARK.match(lines[i - 1].strip()) if i > 0 else None
        if mark:
            block.mark, block.detail = mark.group(1), mark.group(2) or ""
            if block.mark == "run":
                block.options = parse_options(block.detail, block.where)
        found.append(block)
        i = end + 1
    return found


def marks_without_a_block(path: str) -> list[int]:
    """Lines of ``path`` holding a run/not run mark that no fenced block follows."""
    lines = (ROOT / path).read_text().splitlines()
    return [
        n + 1
        for n, line in enumerate(lines)
        if MARK.match(line.strip()) and (n + 1 >= len(lines) or not FENCE.match(lines[n + 1]))
    ]


def parse_options(text: str, where: str) -> dict:
    options: dict = {key: [] for key in REPEATED}
    for word in shlex.split(text):
        key, _, value = word.partition("=")
        if key not in OPTIONS:
            raise ValueError(f"{where}: unknown run option {key!r}")
        if key in REPEATED:
            options[key].append(value)
        else:
            options[key] = value if value else True
    return options


def groups() -> dict[str, list[Block]]:
    """The blocks that run, by group (``<file>:<group>``), in document order."""
    found: dict[str, list[Block]] = {}
    for path in DOCS:
        for block in blocks(path):
            if block.mark == "run":
                name = block.options.get("group") or f"line {block.line}"
                found.setdefault(f"{path}:{name}", []).append(block)
    return found


def unique_groups() -> dict[str, list[Block]]:
    """:func:`groups`, a group identical to an earlier one (the same blocks and options in
    another file) left out: it runs once."""
    seen: dict[tuple, str] = {}
    kept: dict[str, list[Block]] = {}
    for name, members in groups().items():
        key = tuple((b.text, b.detail) for b in members)
        if key not in seen:
            seen[key] = name
            kept[name] = members
    return kept


# ---- rewriting ---------------------------------------------------------------------------

LOOPBACK = re.compile(r"(?<![\d.])127\.0\.0\.1:(\d+)")
STARTS = re.compile(r"^(\s*)(machida-flink|machida|integration_test)(?= )", re.M)


def port_map(text: str) -> dict[str, str]:
    return {port: str(closed_port()) for port in sorted(set(LOOPBACK.findall(text))) if port != "0"}


def rewrite(text: str, ports: dict[str, str], resilience_dir: Path) -> str:
    text = LOOPBACK.sub(lambda m: f"127.0.0.1:{ports.get(m[1], m[1])}", text)
    if "--resilience-dir" not in text:
        text = STARTS.sub(lambda m: f"{m[1]}{m[2]} --resilience-dir {resilience_dir}", text)
    return text


# ---- running -----------------------------------------------------------------------------


def stale_installation() -> list[str]:
    """What ``make install flink-install`` would redo in the checkout. A ``make`` in a view
    must find nothing to do: pip, run there, would write the view's path into the
    environment's scripts, and the view is removed after the test."""
    venv, java = ROOT / ".venv", sorted((ROOT / "java").rglob("*.java"))
    rules = {
        venv / ".installed": [ROOT / "pyproject.toml", ROOT / "requirements.txt"],
        venv / ".flink-installed": [venv / ".installed", ROOT / "pyproject.toml"],
        ROOT / "build" / "flink" / "machida-flink.jar": [venv / ".flink-installed", *java],
    }
    stale = []
    for target, sources in rules.items():
        if not target.exists() or any(s.stat().st_mtime > target.stat().st_mtime for s in sources):
            stale.append(str(target.relative_to(ROOT)))
    return stale


def checkout_view(into: Path) -> Path:
    """A directory of symbolic links to the checkout's entries (what runs write stays here)."""
    stale = stale_installation()
    assert not stale, f"run make install flink-install first: {stale} are out of date"
    into.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in NOT_VIEWED and not entry.name.endswith(".log"):
            (into / entry.name).symlink_to(entry)
    return into


@dataclass
class Shell:
    block: Block
    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Scenario:
    """One group's blocks, run in order in one directory; :meth:`close` ends what is left."""

    def __init__(self, name: str, members: list[Block], tmp: Path, hosts=None) -> None:
        self.name = name
        self.members = members
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.resilience = tmp / "res"
        self.resilience.mkdir()
        home = tmp / "home"
        home.mkdir()
        self.ports = port_map("".join(b.text for b in members))
        self.work = self._directory({b.options["in"] for b in members if "in" in b.options})
        self.hosts = hosts or {}
        self.shells: list[Shell] = []
        env = dict(os.environ, HOME=str(home))
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        env["FLINK_REST_PORT"] = self.ports.get("8081") or str(closed_port())
        env["FLINK_RPC_PORT"] = str(closed_port())
        for name in ("PYTHONPATH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
            env.pop(name, None)
        self.env = env

    def _directory(self, given: set) -> Path:
        assert len(given) <= 1, f"{self.name}: its blocks disagree on in=: {given}"
        where = given.pop() if given else None
        if where is None:
            work = self.tmp / "work"
            work.mkdir()
            return work
        if where == ".":
            return checkout_view(self.tmp / "checkout")
        return Path(shutil.copytree(ROOT / where, self.tmp / Path(where).name))

    def report(self) -> str:
        parts = [f"group {self.name}, ports {self.ports}, in {self.work}"]
        for shell in self.shells:
            parts.append(
                f"--- {shell.block.where} (exit {shell.proc.poll()})\n"
                f"{shell.block.text}--- output:\n{shell.output()[-4000:]}"
            )
        return "\n".join(parts)

    def fail(self, why: str) -> None:
        raise AssertionError(f"{why}\n{self.report()}")

    def everything_printed(self) -> str:
        return "".join(shell.output() for shell in self.shells)

    def wait_for(self, text: str, source, what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while text not in source():
            if time.monotonic() > deadline:
                self.fail(f"timed out after {WAIT_S} s waiting for {text!r} ({what})")
            if isinstance(what, Shell) and what.proc.poll() is not None and text not in source():
                self.fail(f"{what.block.where} exited before printing {text!r}")
            time.sleep(0.05)

    def run(self) -> None:
        for index, block in enumerate(self.members):
            for text in block.options["after"]:
                self.wait_for(text, self.everything_printed, f"before {block.where}")
            if "file" in block.options:
                (self.work / block.options["file"]).write_text(block.text)
                continue
            shell = self.start(index, block)
            if block.options.get("bg"):
                if "ready" in block.options:
                    self.wait_for(block.options["ready"], shell.output, shell)
                continue
            try:
                code = shell.proc.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.fail(f"{block.where} did not finish within {WAIT_S} s")
            if code != 0:
                self.fail(f"{block.where} exited {code}")
            self.check_expected(shell)
        self.finish()

    def start(self, index: int, block: Block) -> Shell:
        log = self.logs / f"{index}.log"
        text = rewrite(block.text, self.ports, self.resilience)
        if block.options.get("python"):
            script = self.logs / f"{index}.py"
            script.write_text(text)
            argv = [sys.executable, str(script)]
        else:
            argv = ["bash", "-e", "-c", text]
        host = block.options.get("host")
        if host:
            argv = [*self.hosts[host], *argv]
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, cwd=self.work, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        shell = Shell(block, proc, log)
        self.shells.append(shell)
        return shell

    def check_expected(self, shell: Shell) -> None:
        for text in shell.block.options["expect"]:
            if text not in shell.output():
                self.fail(f"{shell.block.where} did not print {text!r}")

    def finish(self) -> None:
        """Ctrl-C for the ``stop`` shells, which must have run until then, after the others
        ended by themselves; all exit 0. In a pipeline (``data_receiver | tee``) Ctrl-C reaches
        every command, as in a terminal, and ``tee`` dies of it: the shell's 130."""
        running = [s for s in self.shells if s.block.options.get("bg")]
        for shell in [s for s in running if not s.block.options.get("stop")]:
            self._wait_exit(shell, {0})
        for shell in reversed([s for s in running if s.block.options.get("stop")]):
            if shell.proc.poll() is not None:
                self.fail(f"{shell.block.where} ended before Ctrl-C")
            os.killpg(shell.proc.pid, signal.SIGINT)
            self._wait_exit(shell, {0, 128 + signal.SIGINT} if "|" in shell.block.text else {0})

    def _wait_exit(self, shell: Shell, allowed: set) -> None:
        try:
            code = shell.proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            self.fail(f"{shell.block.where} was still running {WAIT_S} s after the last block")
        if code not in allowed:
            self.fail(f"{shell.block.where} (bg) exited {code}")
        self.check_expected(shell)

    def close(self) -> None:
        """Kill whatever a block left running, and a Flink cluster a block started."""
        for shell in self.shells:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                shell.proc.wait(10)
        flink = self.work / ".flink"
        if flink.is_dir():
            from machida_flink import cluster

            pids = cluster.pids(flink, "taskexecutor") + cluster.pids(flink, "standalonesession")
            subprocess.run([sys.executable, "-m", "machida_flink.cluster", "stop", "--dir",
                            str(flink)], capture_output=True, timeout=120)  # fmt: skip
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
