"""docs/api.md's error lines are what the runner prints, for the README's votes.py.

Each case changes the README's ``votes.py`` (taken from the README itself) in one place,
loads or runs it as the runner does (the loader, then the in-process driver with
``errors="log"``), and checks that the line printed is quoted, word for word, in
docs/api.md. The driver names its source connection ``peer in-process driver`` where a
worker names the sender's address, so the doc's ``peer 127.0.0.1:41712`` stands for it.
"""

from __future__ import annotations

import re
import struct
import sys

import pytest
from docblocks import ROOT, blocks

from machida.app.callbacks import Callbacks
from machida.app.loader import BUILD_FAILED, load_plan
from machida.console import error_line
from machida.errors import ApplicationError, UserCallbackError
from machida.testing import Driver

API = (ROOT / "docs" / "api.md").read_text()
ARGS = ["machida", "--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002"]
DOC_PEER = "peer 127.0.0.1:41712"


def votes_py() -> str:
    (block,) = [b for b in blocks("README.md") if b.options.get("file") == "votes.py"]
    return block.text


def changed(*edits: tuple[str, str]) -> str:
    source = votes_py()
    for old, new in edits:
        assert source.count(old) == 1, f"votes.py no longer has {old!r}"
        source = source.replace(old, new)
    return source


def quoted(line: str) -> bool:
    return f"`{line}`" in API


@pytest.fixture
def votes(make_app, monkeypatch):
    """Write votes.py with ``edits`` in a fresh directory, the only ``votes`` to be found: the
    loader puts each working directory on sys.path, so the path is restored afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "votes", raising=False)

    def write(*edits):
        sys.modules.pop("votes", None)
        return make_app(changed(*edits), name="votes")

    return write


CLEAN = "        return vote if len(vote) == 1 and vote in string.ascii_lowercase else None\n"
COUNT = '        tally["votes"] += 1\n'
RESULT = '        return (letter, tally["votes"]), True  # (output, whether the state changed)\n'
PARTITION = "    def partition(self, letter):\n        return letter\n"

BUILD_ERRORS = {
    "no application_setup": (
        [("def application_setup(args):", "def setup(args):")],
        "Error: module 'votes' has no application_setup(args)",
    ),
    "done after to_sink": (
        [("    return ab.build()", "    ab.done()\n    return ab.build()")],
        "Error: done() at action 5 has no open pipeline: to_sink() already closed pipeline "
        "'votes'. Remove done(); it is only for pipelines without a sink.",
    ),
    "no method for the role": (
        [('"tallies", ByLetter(), keys', '"tallies", Clean(), keys')],
        "Error: Clean at action 3 is used as a partition function but has no partition()",
    ),
    "a key twice": (
        [("keys = list(string.ascii_lowercase)", 'keys = list(string.ascii_lowercase) + ["a"]')],
        "Error: to_state_partition() at action 3: key 'a' appears twice in the key list "
        "(equal to 'a')",
    ),
    "header length": (
        [("header_length(self):\n        return 4", "header_length(self):\n        return 9")],
        "Error: Decoder.header_length() returned 9; expected an int from 1 to 8",
    ),
    "kafka": (
        [("wallaroo.TCPSinkConfig(out_host, out_port, Encoder())",
          'wallaroo.KafkaSinkConfig("t", [], "Warn", 0, 0, Encoder())')],
        "Error: Kafka sources and sinks are not supported by this runner",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BUILD_ERRORS))
def test_build_errors_are_the_documented_lines(case, votes):
    edits, line = BUILD_ERRORS[case]
    votes(*edits)
    with pytest.raises(ApplicationError) as err:
        load_plan("votes", ARGS)
    assert error_line(err.value) == line
    assert quoted(line)
    assert "Could not load module" not in str(err.value)  # so BUILD_FAILED follows it
    assert f"`{BUILD_FAILED}`" in API


PARAMETER_ERRORS = {
    "ab.to(Clean)": ("ab.to(Clean())", "Expecting a Computation class. Got an instance instead."),
    "ab.to_state_partition(AddVote()": (
        "ab.to_state_partition(AddVote",
        "Expecting a Computation Builder instance. Got a class instead.",
    ),
    "TallyBuilder(), ": (
        "TallyBuilder, ",
        "Expecting a State Builder instance. Got a class instead.",
    ),
    "keys = list(string.ascii_lowercase)": (
        "keys = tuple(string.ascii_lowercase)",
        "Expecting a partition_keys list. Got a <class 'tuple'> instead.",
    ),
}


@pytest.mark.parametrize("old", list(PARAMETER_ERRORS))
def test_the_builder_refuses_class_for_instance_and_back_as_documented(old, votes):
    new, message = PARAMETER_ERRORS[old]
    votes((old, new))
    with pytest.raises(ApplicationError) as err:
        load_plan("votes", ARGS)
    last = str(err.value).splitlines()[-1]
    raised = "application_setup(args) of module 'votes' raised WallarooParameterError"
    assert last == f"{raised}: {message}"
    assert quoted(message)
    if old == "ab.to(Clean)":
        assert quoted(last)


def test_a_missing_module_and_a_failing_build_are_the_documented_lines(votes, tmp_path):
    with pytest.raises(ApplicationError) as err:
        load_plan("votes", ARGS)
    assert quoted(error_line(err.value).replace(str(tmp_path), "/home/me"))
    votes(('return {"votes": 0}', 'return {}["votes"]'))
    with pytest.raises(ApplicationError) as err:
        Driver("votes")
    assert quoted(error_line(err.value))


# (edits, what goes in, workers): the first line printed must be quoted in docs/api.md
RUN_ERRORS = {
    "raised": ([(COUNT, COUNT + '        if letter == "b": raise ValueError("no b")\n')],
               ["a", "b"], 1),
    "decode raised": ([('return bs.decode("utf-8")', 'return bs.decode("ascii")')],
                      struct.pack(">I", 2) + "é".encode(), 1),
    "no tuple": ([(RESULT, "        return letter\n")], ["a"], 1),
    "compute_multi": ([("    def compute(self, vote):\n",
                        "    def compute_multi(self, vote):\n        return (vote,)\n")],
                      ["a"], 1),
    "encode": ([('return struct.pack(">I", len(text)) + text', "return 42")], ["a"], 1),
    "serialize": ([("import wallaroo\n", "import wallaroo\nimport json\n\n\n"
                    "def serialize(o): return json.dumps(o).encode()\n\n\n"
                    "def deserialize(bs): return json.loads(bs)\n"),
                   (CLEAN, "        return frozenset(vote.strip())\n"),
                   (PARTITION, "    def partition(self, letter):\n        return min(letter)\n")],
                  ["a", "b"], 2),
    "unknown key": ([(CLEAN, "        return vote\n")], ["a", "zz"], 1),
    "u64 key": ([("ab.to_state_partition(", "ab.to_state_partition_u64("),
                 ("keys = list(string.ascii_lowercase)", "keys = list(range(26))")], ["a"], 1),
    "unhashable": ([(PARTITION, "    def partition(self, letter):\n        return [letter]\n")],
                   ["a"], 1),
    "payload length": ([], b"\x00\x00\x00\x00", 1),
}  # fmt: skip


@pytest.mark.parametrize("case", list(RUN_ERRORS))
def test_errors_while_messages_flow_are_the_documented_lines(case, votes, capsys):
    edits, inputs, workers = RUN_ERRORS[case]
    votes(*edits)
    capsys.readouterr()
    driver = Driver("votes", workers=workers, errors="log")
    if isinstance(inputs, bytes):
        driver.feed_bytes(inputs)
    else:
        driver.feed(inputs)
    first = capsys.readouterr().err.splitlines()[0]
    assert quoted(first.replace("peer in-process driver", DOC_PEER)), first
    assert sum(driver.counters.values()) >= 1 or case == "payload length"


def test_no_key_matched_yet_compares_the_types(votes, capsys):
    votes((PARTITION, "    def partition(self, letter):\n        return ord(letter)\n"))
    capsys.readouterr()
    Driver("votes", errors="log").feed(["a"])
    line = capsys.readouterr().err.strip()
    head, tail = re.split(r"(?<=only counted\.) ", line)
    assert head.startswith("WARNING: ByLetter.partition returned key 97 which is not")
    assert quoted(tail)


def test_system_exit_ends_the_process_after_the_documented_line(votes, capsys):
    votes((COUNT, COUNT + "        raise SystemExit(3)\n"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        Driver("votes", errors="log").feed(["a"])
    assert exit_.value.code == 3
    assert quoted(capsys.readouterr().err.strip())


def test_repeats_are_summarised_as_documented():
    callbacks = Callbacks("initializer")
    for _ in range(2):
        callbacks.raised("AddVote.compute", ValueError("no b"), "votes")
    (line,) = callbacks.summary_lines()
    assert quoted(line)


def test_the_test_driver_raises_with_the_same_text(votes):
    votes((COUNT, COUNT + '        if letter == "b": raise ValueError("no b")\n'))
    with pytest.raises(UserCallbackError) as err:
        Driver("votes").feed(["b"])
    assert quoted(f"ERROR: {err.value}")
    assert isinstance(err.value.__cause__, ValueError)
