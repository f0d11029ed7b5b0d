"""machida-flink with its embedded MiniCluster: real JVMs, real sockets, the project's tools.

One Flink job per test (a JVM and a MiniCluster start in 5-15 s): sequence_window
against the in-process driver on random inputs, and an application of the
tests' own that uses every API feature the translation covers.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from pathlib import Path

import pytest
from flinkhelp import (
    FlinkProcess,
    closed_port,
    frame,
    lines,
    receiver,
    send,
    shutdown,
    u64_frames,
    wait_lines,
    windows,
)

from machida.testing import Driver, run

APPS = str(Path(__file__).parent / "apps")


def by_newest_parity(values: list[list[int]]) -> dict[int, list[list[int]]]:
    keyed = defaultdict(list)
    for window in values:
        keyed[window[-1] % 2].append(window)
    return dict(keyed)


@pytest.mark.timeout(400)
def test_sequence_window_per_key_equals_the_driver_and_a_bad_frame_closes_one_connection(
    tmp_path,
):
    rng = random.Random(20171031)
    values = [rng.randrange(1, 2**63) for _ in range(3000)]
    values += [12 * 1000, 12 * 1000 + 1, 12 * 1000 + 2, 12 * 77 + 5]  # compute_multi's cases
    tail = [12 * 5000 + 5, 12 * 5000 + 7]  # from the connection whose framing then breaks
    expected_frames = run("sequence_window", values + tail, workers=2)
    expected = by_newest_parity([[int(x) for x in f[4:].strip(b"[]").split(b",")]
                                 for f in expected_frames])  # fmt: skip
    recv, out = receiver(tmp_path)
    in_port, external = closed_port(), f"127.0.0.1:{closed_port()}"
    with recv, FlinkProcess(
        "--application-module", "sequence_window", "--in", f"127.0.0.1:{in_port}",
        "--out", out, "--external", external, "--resilience-dir", str(tmp_path),
        "--parallelism", "2", "--ponythreads=1", cwd=Path(__file__).parent.parent,
    ) as flink:  # fmt: skip
        flink.wait_ready()
        send(in_port, u64_frames(values), chunk=rng.randrange(5, 4000))
        wait_lines(recv, len(expected_frames) - 2)
        send(in_port, u64_frames(tail) + b"\x00\x00\x00\x00" + u64_frames([7]))
        got = windows(wait_lines(recv, len(expected_frames)))
        flink.wait_stderr(lambda err: b"payload length" in err)
        assert by_newest_parity(got) == expected, flink.report()
        assert re.search(
            rb"ERROR: Decoder.payload_length\(\) gave invalid payload length 0 \[pipeline "
            rb"'Sequence Window', peer 127\.0\.0\.1:\d+\]; connection closed\n",
            flink.stderr,
        ), flink.report()
        assert shutdown(flink, external) == 0, flink.report()
        assert recv.stop() == 0  # flushes what it received, so the count below is final
    assert b"Traceback" not in flink.stderr, flink.report()
    # read again once the job has drained and finished: nothing may come after the bad frame
    assert len(lines(recv)) == len(expected_frames), "output arrived after the bad frame"
    out_text = flink.stdout.decode()
    for line in (
        "External Clean Shutdown received.",
        "Flink job: FINISHED",
        "Recovery files removed.",
        "Connections: Finished shutdown procedure.",
    ):
        assert line in out_text, flink.report()  # fmt: skip
    assert not list(tmp_path.glob("sequence_window-*")), "recovery files left behind"


FEATURE_WORDS = [
    "Apple apricot banana",
    "  ",
    "avocado 1up Berry cherry",
    "apple 42 apple cherry date",
    "éclair zebra",
]
FEATURE_NUMBERS = list(range(1, 40))
BAD_NUMBER = 13  # NumberDecoder.decode raises for it
# The done() pipeline adds to key 0 of the shared state "totals" only, so that a
# probe (the value 0, also key 0) shows when it has been applied.
FEATURE_MORE = [300, 600, 903]


def feature_reference() -> tuple[dict, list[str]]:
    """machida.testing's word outputs per first letter, and its ``key:total`` items."""
    args = ["flink_features", "--in", "x:1,x:2,x:3,x:6", "--out", "x:4,x:5"]
    driver = Driver("flink_features", workers=2, args=args, errors="log")
    per_letter = defaultdict(list)
    for output in driver.feed(FEATURE_WORDS, pipeline=0):
        per_letter[output.value[1]].append(output.data[4:].decode())
    driver.feed(FEATURE_MORE, pipeline=2)
    numbers = [v for v in FEATURE_NUMBERS if v != BAD_NUMBER]
    items = [o.data[4:].decode().split("|")[1] for o in driver.feed(numbers, pipeline=1)]
    return dict(per_letter), items


@pytest.mark.timeout(400)
def test_every_api_feature_runs_as_on_the_driver(tmp_path, test_apps):
    expected_words, expected_items = feature_reference()
    word_recv, word_out = receiver(tmp_path)
    number_recv, number_out = receiver(tmp_path)
    ports = [closed_port() for _ in range(4)]
    external = f"127.0.0.1:{closed_port()}"
    ins = ",".join(f"127.0.0.1:{p}" for p in ports)
    with word_recv, number_recv, FlinkProcess(
        "--application-module", "flink_features", "--in", ins, "--out",
        f"{word_out},{number_out}", "--external", external, "--resilience-dir", str(tmp_path),
        "--parallelism", "2", cwd=APPS,
    ) as flink:  # fmt: skip
        flink.wait_ready()
        send(ports[0], b"".join(frame(text.encode()) for text in FEATURE_WORDS))
        send(ports[3], frame(b"stateless") + frame(b"pipeline"))
        send(ports[2], u64_frames(FEATURE_MORE))
        probes = probe_until_shared(ports[1], number_recv, sum(FEATURE_MORE))
        word_lines = wait_lines(word_recv, sum(map(len, expected_words.values())) + 2)
        send(ports[1], u64_frames(FEATURE_NUMBERS))
        number_lines = wait_lines(number_recv, probes + len(expected_items))
        assert shutdown(flink, external) == 0, flink.report()
    echoes = [line for line in word_lines if line.startswith(b"echo:")]
    assert echoes == [b"echo:sseletats", b"echo:enilepip"]
    got_words = defaultdict(list)
    for line in word_lines:
        if not line.startswith(b"echo:"):
            got_words[line.decode()[1]].append(line.decode())
    assert dict(got_words) == expected_words
    check_numbers(number_lines, probes, expected_items)
    err = flink.stderr.decode()
    warned = re.findall(r"FirstLetter\.partition returned key '(.)' which is not in the key list "
                        r"of state 'word counts'; message dropped", err)  # fmt: skip
    assert len(warned) == 1 and warned[0] in "14é", err
    assert "machida: 3 message(s) dropped: key not in list (FirstLetter.partition)" in err, err
    assert "ERROR: NumberDecoder.decode() raised ValueError: unlucky number" in err, err
    assert "machida: 1 message(s) dropped: raised (NumberDecoder.decode)" in err, err


def probe_until_shared(port: int, recv, shared: int) -> int:
    """Send 0 (key 0 of "totals") until its total shows the done() pipeline's values."""
    for probe in range(1, 200):
        send(port, u64_frames([0]))
        line = wait_lines(recv, probe)[-1].decode()
        if line.endswith(f"|0:{shared}"):
            return probe
    raise AssertionError(f"the done() pipeline's values never reached state 'totals': {line}")


def check_numbers(got: list[bytes], probes: int, expected_items: list[str]) -> None:
    """``n|key:total`` lines: n counts 1..N (to_stateful: one state), each key's totals in
    order, from the done() pipeline's share on (shared state), as the driver computed."""
    parsed = [line.decode().split("|") for line in got]
    assert sorted(int(n) for n, _ in parsed) == list(range(1, len(got) + 1))
    items = [item for _, item in parsed[probes:]]
    for key in "012":
        mine = [i for i in items if i.startswith(f"{key}:")]
        assert mine == [i for i in expected_items if i.startswith(f"{key}:")], (key, mine)
