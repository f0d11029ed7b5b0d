"""The example applications: each README's test command on 1 and 3 workers, and the driver.

Each example directory is copied to the test's directory and the bash block
between ``<!-- test:begin -->`` and ``<!-- test:end -->`` of its README runs
there as written, with the project's console scripts first on PATH; only
``--workers 3`` becomes the worker count under test and the resilience
directory moves into the test's directory. The block ends with an
``integration_test`` run whose check must pass.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from machida.testing import Driver, run
from wallaroo_tools.layouts import FRAMED, records

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent
NAMES = ["word_count", "market_spread", "counter", "temperature"]


def readme_block(name: str) -> str:
    text = (EXAMPLES / name / "README.md").read_text()
    block = re.search(r"<!-- test:begin -->\n```bash\n(.*?)```\n<!-- test:end -->", text, re.S)
    assert block, f"examples/{name}/README.md lost its test block"
    return block.group(1)


def test_every_example_has_a_readme_with_a_test_block():
    found = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())
    assert found == sorted(NAMES)
    for name in NAMES:
        assert "integration_test " in readme_block(name)


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_the_readme_check_passes(tmp_path, name, workers):
    work = tmp_path / name
    shutil.copytree(EXAMPLES / name, work)
    script = readme_block(name)
    assert script.count("--workers 3") == 1
    script = script.replace("--workers 3", f"--workers {workers}")
    script = script.replace(
        "integration_test ", f"integration_test --resilience-dir {tmp_path}/res "
    )
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)  # the runner finds the module in the current directory
    result = subprocess.run(["bash", "-e", "-c", script], cwd=work, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "ERROR" not in result.stderr, result.stderr  # --log-level error: silent on success
    assert not (tmp_path / "res").exists()


# -- the same applications in the in-process driver --------------------------------------------


@pytest.fixture
def in_example(monkeypatch):
    """Make an example's directory the working directory (its module and files are there)."""

    def enter(name: str) -> Path:
        monkeypatch.chdir(EXAMPLES / name)
        monkeypatch.syspath_prepend(str(EXAMPLES / name))
        return EXAMPLES / name

    yield enter
    for name in NAMES:
        sys.modules.pop(name, None)


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def test_word_count_agrees_with_its_expected_file_on_any_number_of_workers(in_example):
    here = in_example("word_count")
    lines = [line for line in (here / "count_this.txt").read_bytes().split(b"\n") if line]
    expected = json.loads((here / "_expected.json").read_text())
    assert sum(expected.values()) == 482 and len(lines) == 35
    for workers in (1, 3):
        out = run("word_count", b"".join(frame(line) for line in lines), workers=workers,
                  frames=True)  # fmt: skip
        assert len(out) == 482
        final = dict(record[4:].decode().rsplit(" => ", 1) for record in out)
        assert {word: int(n) for word, n in final.items()} == expected


def test_word_count_expected_file_is_what_its_generator_writes(in_example, tmp_path):
    here = in_example("word_count")
    target = tmp_path / "expected.json"
    subprocess.run([sys.executable, "_test/expected.py", "count_this.txt", str(target)],
                   check=True, capture_output=True)  # fmt: skip
    assert json.loads(target.read_text()) == json.loads((here / "_expected.json").read_text())


def test_market_spread_state_is_shared_by_its_two_pipelines(in_example):
    in_example("market_spread")
    driver = Driver("market_spread", workers=3, args=["machida", "--in", "h:1,h:2", "--out", "h:3"])
    quote = struct.pack(">B4sdd", 2, b"ACME", 100.0, 100.2)
    order = struct.pack(">BI4sBdd", 1, 7, b"ACME", 1, 300.0, 100.25)
    assert driver.feed_bytes(frame(order), pipeline=0)[0].data[4:] == (
        b"000007 ACME buy 300 @ 100.25: rejected (no quote)"
    )
    assert driver.feed_bytes(frame(quote), pipeline=1) == []  # done(): no sink
    assert driver.feed_bytes(frame(order), pipeline=0)[0].data[4:] == (
        b"000007 ACME buy 300 @ 100.25: accepted"
    )
    assert driver.state("symbol-data", b"ACME").offer == 100.2
    assert driver.owner("symbol-data", b"ACME") == "initializer"  # key 0 of the list


def market_spread_check(here: Path, tmp_path: Path, verdicts: list[bytes]):
    out = tmp_path / "received.txt"
    out.write_bytes(b"".join(frame(v) for v in verdicts))
    return subprocess.run(
        [sys.executable, "_test/validate.py", "--expected", str(tmp_path / "_expected.txt"),
         "--output", str(out)], cwd=here, capture_output=True, text=True,
    )  # fmt: skip


def test_market_spread_check_allows_orders_before_the_first_quote_and_nothing_else(
    in_example, tmp_path
):
    here = in_example("market_spread")
    shutil.copy(here / "symbols.txt", tmp_path)
    subprocess.run([sys.executable, str(here / "_test/gen.py"), "--orders", "300"], cwd=tmp_path,
                   check=True, capture_output=True)  # fmt: skip
    data = (tmp_path / "_expected.txt").read_bytes()
    expected = [payload for _, payload in records(data, FRAMED)]
    acme = [i for i, v in enumerate(expected) if v.split()[1] == b"ACME"]
    assert len(acme) >= 3 and not expected[acme[0]].endswith(b"(no quote)")

    def no_quote(v: bytes) -> bytes:
        return v.rsplit(b": ", 1)[0] + b": rejected (no quote)"

    # the quotes came late for ACME's first two orders: still correct, in any order
    early = list(expected)
    early[acme[0]], early[acme[1]] = no_quote(early[acme[0]]), no_quote(early[acme[1]])
    result = market_spread_check(here, tmp_path, early[::-1])
    assert result.returncode == 0, result.stdout
    assert "2 order(s) came before their symbol's first quote" in result.stdout
    # but once an order has met the quote, a later one cannot miss it
    late = list(expected)
    late[acme[1]] = no_quote(late[acme[1]])
    result = market_spread_check(here, tmp_path, late)
    assert result.returncode == 1 and f"wrong:      {late[acme[1]].decode()}" in result.stdout
    # a wrong verdict, a lost one and a repeated one all fail
    wrong = list(expected)
    wrong[acme[2]] = wrong[acme[2]].rsplit(b": ", 1)[0] + b": accepted!"
    for verdicts in (wrong, expected[1:], [*expected, expected[0]]):
        result = market_spread_check(here, tmp_path, verdicts)
        assert result.returncode == 1 and "Market Spread output is wrong" in result.stdout


def test_counter_state_lives_on_the_initializer(in_example):
    in_example("counter")
    driver = Driver("counter", workers=3)
    outputs = driver.feed([5, 7, 30])
    assert [o.data[4:] for o in outputs] == [b"1,5", b"2,12", b"3,42"]
    assert {o.worker for o in outputs} == {"initializer"}


def test_temperature_converts_in_order(in_example):
    in_example("temperature")
    out = run("temperature", [frame(b"212"), frame(b"-40"), frame(b"98.6")], workers=3,
              frames=True)  # fmt: skip
    assert out == [b"100.0\n", b"-40.0\n", b"37.0\n"]
