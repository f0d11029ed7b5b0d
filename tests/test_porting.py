"""Porting from machida (Python 2.7): what the runner says about each Python 2 habit.

The loader names the Python 2 syntax a module fails on and points to
docs/porting.md; a partition function whose keys have never matched its key
list says how its key and the list differ; and the four breakages the guide
describes give the messages it quotes. Each application here is a small
2017-style module written by the ``make_app`` fixture.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from machida.app.callbacks import UNKNOWN_KEY
from machida.app.loader import load_plan
from machida.errors import ApplicationError
from machida.testing import Driver, run

ARGS = ["machida", "--in", "127.0.0.1:0", "--out", "127.0.0.1:0"]
GUIDE = Path(__file__).resolve().parent.parent / "docs" / "porting.md"

SETUP = """
import struct
import wallaroo


def application_setup(args):
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("letters", wallaroo.TCPSourceConfig("127.0.0.1", "0", Decoder()))
    ab.to_state_partition(Count(), Builder(), "letter state", Partition(), {keys})
    ab.to_sink(wallaroo.TCPSinkConfig("127.0.0.1", "0", Encoder()))
    return ab.build()


class Decoder(object):
    def header_length(self):
        return 4

    def payload_length(self, bs):
        return struct.unpack(">I", bs)[0]

    def decode(self, bs):
        return bs


class Builder(object):
    def build(self):
        return {{}}


class Count(object):
    def compute(self, data, state):
        {count}
        return (data, True)


class Encoder(object):
    def encode(self, data):
        return data + b"\\n"


class Partition(object):
    def partition(self, data):
        return {key}
"""


def app(make_app, key="data[0:1]", keys="[b'a', b'b', b'c', b'd']", count="pass") -> str:
    return make_app(SETUP.format(key=key, keys=keys, count=count))


def frames(*payloads: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in payloads)


# -- the loader: Python 2 syntax -----------------------------------------------------------------

# (the code after "import wallaroo" and a blank line, what it is, its line in the module)
PYTHON2 = [
    ('print "setting up"', "a print statement", 3),
    ("print args", "a print statement", 3),
    ('exec "x = 1"', "an exec statement", 3),
    ("try:\n    pass\nexcept ValueError, err:\n    pass", "'except X, e:'", 5),
    ("try:\n    pass\nexcept (KeyError, IndexError), err:\n    pass", "'except X, e:'", 5),
    ("x = `42`", "backticks", 3),
    ("if 1 <> 2:\n    pass", "the '<>' operator", 3),
    ('raise ValueError, "bad input"', "'raise E, value'", 3),
    ("mode = 0644", "an octal literal such as 0777", 3),
    ("big = 10L", "a long literal such as 10L", 3),
    ('pattern = ur"\\d+"', "a ur'' string", 3),
]


@pytest.mark.parametrize(("code", "what", "at"), PYTHON2)
def test_a_module_in_python_2_is_named_in_one_line_with_the_guide(make_app, code, what, at):
    name = make_app(f"import wallaroo\n\n{code}\n")
    with pytest.raises(ApplicationError) as err:
        load_plan(name, ARGS)
    text = str(err.value)
    assert "Traceback" not in text  # the syntax error's place, not the import machinery
    *shown, last = text.splitlines()
    assert re.match(r'  File ".*", line \d+', shown[0]) and shown[-1].startswith("SyntaxError")
    path = os.path.join(os.getcwd(), f"{name}.py")
    assert last == (
        f"Could not load module '{name}': {path} line {at} looks like Python 2 ({what}); "
        f"this runner runs Python 3 applications (3.9 or later), see docs/porting.md to port it"
    )


@pytest.mark.parametrize(
    "line", ["def broken(:\n    pass", 'x = "<>" +', "x = '`' +", "print(x) y", "except_ = 1, 2 3"]
)
def test_a_python_3_syntax_error_gets_no_python_2_hint(make_app, line):
    name = make_app(f"{line}\n")
    with pytest.raises(ApplicationError) as err:
        load_plan(name, ARGS)
    text = str(err.value)
    assert "Python 2" not in text and "Traceback" in text and "SyntaxError" in text
    assert text.endswith(f"Could not load module '{name}'")


def test_a_python_2_module_the_application_imports_is_the_one_named(make_app):
    make_app("def helper():\n    print 'old'\n", name="old_helper")
    name = make_app("import old_helper\n")
    with pytest.raises(ApplicationError) as err:
        load_plan(name, ARGS)
    helper = os.path.join(os.getcwd(), "old_helper.py")
    expected = f"Could not load module '{name}': {helper} line 2 looks like Python 2 ("
    assert str(err.value).splitlines()[-1].startswith(expected + "a print statement)")


def test_machida_prints_the_hint_and_exits_1(tmp_path):
    (tmp_path / "old_app.py").write_text("def application_setup(args):\n    print 'hi'\n")
    result = subprocess.run(
        [sys.executable, "-m", "machida", "--application-module", "old_app", "--metrics",
         "127.0.0.1:1", "--data", "127.0.0.1:0", "--cluster-initializer",
         "--resilience-dir", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1].startswith("Could not load module 'old_app': ")
    assert lines[-1].endswith(
        "looks like Python 2 (a print statement); this runner runs Python 3 "
        "applications (3.9 or later), see docs/porting.md to port it"
    )
    assert "Something went wrong" not in result.stderr


# -- partition keys that never match -------------------------------------------------------------


def test_keys_that_never_match_get_one_warning_comparing_types(make_app, capsys):
    name = app(make_app, key="data[0]")  # Python 3: indexing bytes gives an int
    driver = Driver(name, workers=3, errors="log")
    assert driver.feed_bytes(frames(b"a1", b"b2", b"a3", b"c4")) == []
    assert driver.counters == {(UNKNOWN_KEY, "Partition.partition"): 4}
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1
    assert err == (
        "WARNING: Partition.partition returned key 97 which is not in the key list of state "
        "'letter state'; message dropped. Further drops are only counted. No key has matched "
        "yet: int 97 vs a key list of bytes (b'a', b'b', b'c', ...); see docs/porting.md on "
        "keys.\n"
    )


def test_mixed_key_types_are_all_named(make_app, capsys):
    name = app(make_app, key="data[0:1].decode()", keys="['a', 1, b'c']")
    Driver(name, errors="log").feed_bytes(frames(b"zz"))
    err = capsys.readouterr().err
    # str is one of the list's types, so the guide is not pointed to; three keys: all shown
    assert err.endswith(
        "No key has matched yet: str 'z' vs a key list of bytes and int and str ('a', 1, b'c').\n"
    )


def test_a_key_of_the_right_type_that_misses_first_says_so_without_the_guide(make_app, capsys):
    name = app(make_app, key="data[0:1]")
    Driver(name, errors="log").feed_bytes(frames(b"zz", b"a1"))
    err = capsys.readouterr().err
    assert err.endswith(
        "No key has matched yet: bytes b'z' vs a key list of bytes (b'a', b'b', b'c', ...).\n"
    )


def test_a_miss_after_a_match_gets_only_the_usual_warning(make_app, capsys):
    name = app(make_app, key="data[0:1]")
    out = Driver(name, workers=2, errors="log").feed_bytes(frames(b"a1", b"zz", b"b2"))
    assert [o.value for o in out] == [b"a1", b"b2"]
    err = capsys.readouterr().err
    assert err == (
        "WARNING: Partition.partition returned key b'z' which is not in the key list of state "
        "'letter state'; message dropped. Further drops are only counted.\n"
    )


# -- the four breakages of docs/porting.md, as the runner reports them --------------------------


def test_dict_has_key_fails_every_state_computation(make_app, capsys):
    name = app(make_app, count="state[data] = state[data] + 1 if state.has_key(data) else 1")
    driver = Driver(name, errors="log")
    assert driver.feed_bytes(frames(b"a1", b"a2")) == []
    err = capsys.readouterr().err
    assert err.startswith(
        "ERROR: Count.compute() raised AttributeError: 'dict' object has no attribute 'has_key'"
    )
    assert driver.counters == {("raised", "Count.compute"): 2}


def test_ord_of_a_bytes_element_fails_in_application_setup(make_app):
    name = app(make_app, keys="[sum(ord(c) for c in s) for s in [b'ab']]")
    with pytest.raises(ApplicationError) as err:
        load_plan(name, ARGS)
    assert str(err.value).endswith(
        f"application_setup(args) of module '{name}' raised TypeError: ord() expected string of "
        f"length 1, but int found"
    )


def test_the_ported_forms_of_the_guide_work(make_app):
    name = app(make_app, key="data[0:1]", count="state[data] = state.get(data, 0) + 1",
               keys="[bytes([c]) for c in b'abcd']")  # fmt: skip
    assert run(name, [b"a1", b"b2"], workers=2) == [b"a1\n", b"b2\n"]


def test_the_guide_quotes_the_messages_tested_here():
    text = GUIDE.read_text()
    for quoted in (
        "looks like Python 2 (a print statement); this runner runs Python 3 applications",
        "raised AttributeError: 'dict' object has no attribute 'has_key'",
        "No key has matched yet: int 97 vs a key list of str ('a', 'b', 'c', ...); see docs/",
        "raised TypeError: ord() expected string of length 1, but int found",
    ):
        assert quoted in text, quoted


def test_the_guides_in_process_check_runs_as_written(monkeypatch):
    block = re.search(r"## Check a port in-process.*?```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert block, "docs/porting.md lost its machida.testing example"
    example = GUIDE.parent.parent / "examples" / "word_count"
    monkeypatch.chdir(example)
    monkeypatch.syspath_prepend(str(example))
    try:
        exec(compile(block.group(1), "docs/porting.md", "exec"), {})
    finally:
        sys.modules.pop("word_count", None)
