"""Recovery files (machida.md §9.1, §9.2): writing, the start-up decision table, removal."""

from __future__ import annotations

import json

import pytest

from machida.app.plan import Placement
from machida.console import error_line
from machida.durability import recovery
from machida.durability.recovery import (
    FORMAT,
    MISSING,
    Expectation,
    Fresh,
    Peer,
    Recover,
    RecoveryError,
    RecoveryFiles,
    RecoveryRecord,
    removal_lines,
)

FP = "0123456789abcdef"
OTHER_FP = "fedcba9876543210"
PEERS = {"worker-2": {"control": ["127.0.0.1", 7100], "data": ["127.0.0.1", 7101]}}
EXPECT = Expectation(fingerprint=FP, resilience=False, worker_count=2)
WORKER_EXPECT = Expectation(fingerprint=FP, resilience=False)


def topology(worker: str = "initializer", module: str = "app", **changes) -> RecoveryRecord:
    fields = {
        "module": module,
        "worker": worker,
        "fingerprint": FP,
        "worker_count": 2,
        "workers": ("initializer", "worker-2"),
        "owned_keys": {"window": [0, 2], "other": []},
        "resilience": False,
        "control": ("127.0.0.1", 7000),
        "data": ("127.0.0.1", 7001),
        "peers": PEERS,
    }
    fields.update(changes)
    return RecoveryRecord(**fields)


def initializer_files(tmp_path, module: str = "app") -> RecoveryFiles:
    return RecoveryFiles(str(tmp_path), module, "initializer", initializer=True)


def worker_files(tmp_path, worker: str = "worker-2", module: str = "app") -> RecoveryFiles:
    return RecoveryFiles(str(tmp_path), module, worker, initializer=False)


def names(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


def snapshot(tmp_path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in tmp_path.iterdir()}


def refusal(files: RecoveryFiles, expected: Expectation) -> str:
    """The refusal as printed, without the line giving the command that clears the files."""
    with pytest.raises(RecoveryError) as err:
        files.inspect(expected)
    return error_line(err.value).split("\nTo remove them: ")[0]


def test_a_refusal_gives_the_command_that_clears_exactly_these_files(tmp_path):
    files = initializer_files(tmp_path)
    files.write(topology(fingerprint=OTHER_FP))
    other = worker_files(tmp_path, worker="initializer-2")
    other.write(topology(worker="initializer-2", data=("127.0.0.1", 1), peers=PEERS))
    with pytest.raises(RecoveryError) as err:
        files.inspect(EXPECT)
    command = str(err.value).split("\n")[1]
    assert command.startswith("To remove them: rm -f ")
    listed = command.split()[5:]
    assert sorted(listed) == sorted(files.found())
    assert not any("initializer-2" in path for path in listed)


# Writing and reading back


def test_initializer_round_trip(tmp_path):
    files = initializer_files(tmp_path)
    written = topology()
    files.write(written)
    assert names(tmp_path) == [
        "app-initializer.connection-addresses",
        "app-initializer.local-topology",
        "app-initializer.tcp-control",
        "app-initializer.tcp-data",
        "app-initializer.workers",
    ]
    assert files.read() == written
    assert files.inspect(EXPECT) == Recover(written)


def test_worker_round_trip(tmp_path):
    files = worker_files(tmp_path)
    peers = {"initializer": {"control": ["127.0.0.1", 7000], "data": ["127.0.0.1", 7001]}}
    written = topology("worker-2", control=("127.0.0.1", 7100), data=("0.0.0.0", 7101), peers=peers)
    files.write(written)
    decision = files.inspect(WORKER_EXPECT)
    assert decision == Recover(written)
    assert decision.record.peers == (Peer("initializer", ("127.0.0.1", 7000), ("127.0.0.1", 7001)),)
    assert decision.record.owned() == {"window": [0, 2], "other": []}


def test_single_worker_initializer_writes_only_what_it_has(tmp_path):
    files = initializer_files(tmp_path)
    written = topology(worker_count=1, workers=["initializer"], data=None, peers={})
    files.write(written)
    assert names(tmp_path) == [
        "app-initializer.local-topology",
        "app-initializer.tcp-control",
        "app-initializer.workers",
    ]
    assert files.inspect(Expectation(FP, False, worker_count=1)) == Recover(written)


def test_topology_is_frozen_and_accepts_mappings_or_tuples():
    from_mappings = topology()
    from_tuples = topology(
        owned_keys=(("window", (0, 2)), ("other", ())),
        peers=(Peer("worker-2", ("127.0.0.1", 7100), ("127.0.0.1", 7101)),),
        control=["127.0.0.1", 7000],
    )
    assert from_mappings == from_tuples
    assert hash(from_mappings) == hash(from_tuples)


def test_files_are_json_documents_with_a_format(tmp_path):
    initializer_files(tmp_path).write(topology())
    documents = {p.name: json.loads(p.read_text()) for p in tmp_path.iterdir()}
    assert {doc["format"] for doc in documents.values()} == {FORMAT}
    assert documents["app-initializer.local-topology"] == {
        "format": FORMAT,
        "module": "app",
        "worker": "initializer",
        "fingerprint": FP,
        "worker_count": 2,
        "resilience": False,
        "owned_keys": {"window": [0, 2], "other": []},
    }
    assert documents["app-initializer.tcp-control"]["control"] == ["127.0.0.1", 7000]
    assert documents["app-initializer.workers"]["workers"] == ["initializer", "worker-2"]
    assert documents["app-initializer.connection-addresses"]["peers"] == PEERS


def test_a_worker_topology_needs_data_and_peer_addresses(tmp_path):
    with pytest.raises(ValueError):
        worker_files(tmp_path).write(topology("worker-2", data=None))
    with pytest.raises(ValueError):
        worker_files(tmp_path).write(topology("worker-2", peers={}))
    with pytest.raises(ValueError):
        worker_files(tmp_path).write(topology("initializer"))
    assert names(tmp_path) == []


def test_rewriting_replaces_the_whole_set(tmp_path):
    files = initializer_files(tmp_path)
    files.write(topology())
    smaller = topology(worker_count=1, workers=["initializer"], data=None, peers={})
    files.write(smaller)
    assert "app-initializer.tcp-data" not in names(tmp_path)
    assert files.read() == smaller


def test_write_creates_the_directory(tmp_path):
    files = initializer_files(tmp_path / "new" / "dir")
    files.write(topology())
    assert files.read() == topology()


# Atomicity: a crash part-way leaves an incomplete set, which is a fresh start


def test_local_topology_is_written_last(tmp_path, monkeypatch):
    order = []
    real = recovery._write_durably
    monkeypatch.setattr(recovery, "_write_durably", lambda p, d: (order.append(p), real(p, d)))
    worker_files(tmp_path).write(topology("worker-2"))
    assert len(order) == 5
    assert order[-1].endswith("app-worker-2.local-topology")


def test_crash_while_rewriting_leaves_no_complete_looking_set(tmp_path, monkeypatch):
    files = initializer_files(tmp_path)
    files.write(topology())
    calls = []

    def crash_on_second(path, document):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("simulated crash")
        real(path, document)

    real = recovery._write_durably
    monkeypatch.setattr(recovery, "_write_durably", crash_on_second)
    with pytest.raises(OSError):
        files.write(topology(fingerprint=OTHER_FP))
    monkeypatch.undo()
    assert "app-initializer.local-topology" not in names(tmp_path)
    decision = files.inspect(EXPECT)
    assert isinstance(decision, Fresh) and decision.notices
    assert names(tmp_path) == []


def test_a_left_temporary_file_is_a_leftover(tmp_path):
    (tmp_path / "app-initializer.local-topology.tmp").write_text('{"format": 1, "mod')
    decision = initializer_files(tmp_path).inspect(EXPECT)
    assert decision == Fresh(
        (
            f"Found recovery files without {tmp_path}/app-initializer.local-topology:"
            " an earlier start never finished.",
            "Removing leftover recovery files",
            f"...Removing {tmp_path}/app-initializer.local-topology.tmp...",
        )
    )
    assert names(tmp_path) == []


def test_no_temporary_files_remain_after_write(tmp_path):
    worker_files(tmp_path).write(topology("worker-2"))
    assert not [name for name in names(tmp_path) if name.endswith(".tmp")]


# The start-up decision table, row by row


def test_nothing_found_is_a_fresh_start(tmp_path):
    assert initializer_files(tmp_path).inspect(EXPECT) == Fresh()
    assert initializer_files(tmp_path / "absent").inspect(EXPECT) == Fresh()


def test_recovery_keeps_the_files(tmp_path):
    # Scenario 95: after SIGTERM the files stay, and the same command recovers, twice over.
    files = initializer_files(tmp_path)
    files.write(topology())
    before = snapshot(tmp_path)
    assert isinstance(files.inspect(EXPECT), Recover)
    assert isinstance(files.inspect(EXPECT), Recover)
    assert snapshot(tmp_path) == before


def test_leftovers_without_local_topology_are_removed_with_a_notice(tmp_path):
    # Scenario 93.
    files = worker_files(tmp_path)
    files.write(topology("worker-2"))
    (tmp_path / "app-worker-2.local-topology").unlink()
    (tmp_path / "app-worker-2.evlog").write_bytes(b"")
    decision = files.inspect(WORKER_EXPECT)
    removed = [
        "app-worker-2.connection-addresses",
        "app-worker-2.evlog",
        "app-worker-2.tcp-control",
        "app-worker-2.tcp-data",
        "app-worker-2.workers",
    ]
    assert decision == Fresh(
        (
            f"Found recovery files without {tmp_path}/app-worker-2.local-topology:"
            " an earlier start never finished.",
            "Removing leftover recovery files",
            *[f"...Removing {tmp_path}/{name}..." for name in removed],
        )
    )
    assert names(tmp_path) == []


def test_fingerprint_differs(tmp_path):
    # Scenario 89: same module and worker name, an application with other keys.
    files = initializer_files(tmp_path)
    files.write(topology(fingerprint=OTHER_FP))
    before = snapshot(tmp_path)
    assert refusal(files, EXPECT) == (
        f"Error: recovery files in {tmp_path} for 'app-initializer' belong to a different"
        f" application or topology (fingerprint: recorded {OTHER_FP!r}, now {FP!r})."
        " Remove them or use another --resilience-dir."
    )
    assert snapshot(tmp_path) == before


def test_worker_count_differs(tmp_path):
    # Scenario 90: files of a 3-worker run, restarted with --worker-count 2.
    files = initializer_files(tmp_path)
    files.write(topology(worker_count=3, workers=["initializer", "worker-2", "worker-3"]))
    before = snapshot(tmp_path)
    assert refusal(files, EXPECT) == (
        f"Error: recovery files in {tmp_path} for 'app-initializer' belong to a different"
        " application or topology (worker count: recorded 3, now 2)."
        " Remove them or use another --resilience-dir."
    )
    assert snapshot(tmp_path) == before


def test_resilience_mode_differs(tmp_path):
    # Scenario 91: the fingerprint includes the mode too, but the mode is named.
    files = initializer_files(tmp_path)
    files.write(topology())
    before = snapshot(tmp_path)
    expected = Expectation(fingerprint=OTHER_FP, resilience=True, worker_count=2)
    assert refusal(files, expected) == (
        f"Error: recovery files in {tmp_path} for 'app-initializer' belong to a different"
        " application or topology (resilience mode: recorded 'off', now 'on')."
        " Remove them or use another --resilience-dir."
    )
    assert snapshot(tmp_path) == before


def test_worker_names_differ_when_known(tmp_path):
    files = initializer_files(tmp_path)
    files.write(topology())
    expected = Expectation(FP, False, worker_count=2, workers=("initializer", "w2"))
    assert "(worker names: recorded ['initializer', 'worker-2'], now ['initializer', 'w2'])" in (
        refusal(files, expected)
    )


def test_format_differs(tmp_path):
    files = initializer_files(tmp_path)
    files.write(topology(format=FORMAT + 1))
    before = snapshot(tmp_path)
    assert f"(format: recorded {FORMAT + 1}, now {FORMAT})." in refusal(files, EXPECT)
    assert snapshot(tmp_path) == before


def test_a_worker_does_not_check_the_worker_count(tmp_path):
    files = worker_files(tmp_path)
    files.write(topology("worker-2", worker_count=3))
    assert isinstance(files.inspect(WORKER_EXPECT), Recover)


def test_missing_workers_file(tmp_path):
    # Scenario 92.
    files = initializer_files(tmp_path)
    files.write(topology())
    (tmp_path / "app-initializer.workers").unlink()
    before = snapshot(tmp_path)
    assert refusal(files, EXPECT) == f"{MISSING}\n{tmp_path}/app-initializer.workers"
    assert snapshot(tmp_path) == before


def test_missing_files_of_a_worker_are_all_listed(tmp_path):
    files = worker_files(tmp_path)
    files.write(topology("worker-2"))
    (tmp_path / "app-worker-2.tcp-control").unlink()
    (tmp_path / "app-worker-2.connection-addresses").unlink()
    assert refusal(files, WORKER_EXPECT).splitlines() == [
        "Some resilience/recovery files are missing! Cannot continue!",
        f"{tmp_path}/app-worker-2.tcp-control",
        f"{tmp_path}/app-worker-2.connection-addresses",
    ]


def test_an_initializer_does_not_require_data_or_peer_files(tmp_path):
    files = initializer_files(tmp_path)
    files.write(topology())
    (tmp_path / "app-initializer.tcp-data").unlink()
    (tmp_path / "app-initializer.connection-addresses").unlink()
    assert files.inspect(EXPECT) == Recover(topology(data=None, peers={}))


# Unreadable files


@pytest.mark.parametrize(
    ("ext", "content", "cause"),
    [
        ("workers", "{not json", "Expecting property name"),
        ("workers", "[1, 2]", "expected a JSON object with an integer 'format'"),
        ("workers", '{"format": "1"}', "expected a JSON object with an integer 'format'"),
        ("workers", '{"format": 2}', "missing field 'workers'"),
        ("workers", '{"format": 2, "workers": [1]}', "field 'workers' holds [1]"),
        ("local-topology", b"\xff\xfe", "codec can't decode"),
        ("tcp-control", '{"format": 2, "control": ["h", "7000"]}', "field 'control'"),
        ("tcp-data", '{"format": 2, "data": ["h"]}', "field 'data' holds ['h']"),
        ("local-topology", None, "field 'resilience' holds 'false'"),
        ("connection-addresses", '{"format": 2, "peers": {"w": {}}}', "field 'peers'"),
        (
            "workers",
            '{"format": 2, "workers": [], "placement": {"version": 1}, "target": null, '
            '"leaving": []}',
            "field 'placement'",
        ),
    ],
)
def test_unreadable_file_is_named_with_its_cause(tmp_path, ext, content, cause):
    files = initializer_files(tmp_path)
    files.write(topology())
    path = tmp_path / f"app-initializer.{ext}"
    if content is None:
        document = json.loads(path.read_text())
        path.write_text(json.dumps({**document, "resilience": "false"}))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    before = snapshot(tmp_path)
    message = refusal(files, EXPECT)
    assert message.startswith(f"Error: recovery file {path} cannot be read: ")
    assert cause in message
    assert snapshot(tmp_path) == before


def test_a_count_of_true_is_not_an_integer(tmp_path):
    files = initializer_files(tmp_path)
    files.write(topology(worker_count=1))
    path = tmp_path / "app-initializer.local-topology"
    path.write_text(path.read_text().replace('"worker_count": 1', '"worker_count": true'))
    assert "field 'worker_count' holds True" in refusal(files, EXPECT)


def test_files_of_a_colliding_stem_are_refused(tmp_path):
    # Module "m-a" with worker "b" and module "m" with worker "a-b" share "m-a-b".
    RecoveryFiles(str(tmp_path), "m-a", "b", initializer=True).write(topology("b", module="m-a"))
    files = RecoveryFiles(str(tmp_path), "m", "a-b", initializer=True)
    assert "it records module 'm-a' and worker 'b'" in refusal(files, EXPECT)


# Removal at clean shutdown


def test_remove_all_removes_every_file_local_topology_first(tmp_path):
    files = initializer_files(tmp_path)
    files.write(topology())
    for name in ["app-initializer.evlog", "app-initializer-00000000000000ff.evlog"]:
        (tmp_path / name).write_bytes(b"log")
    (tmp_path / "app-initializer.workers.tmp").write_text("")
    removed = files.remove_all()
    assert removed[0] == f"{tmp_path}/app-initializer.local-topology"
    assert len(removed) == 8
    assert names(tmp_path) == []
    assert files.remove_all() == []


def test_removal_lines():
    assert removal_lines(["/r/a.workers", "/r/a.evlog"]) == [
        "Removing recovery files",
        "...Removing /r/a.workers...",
        "...Removing /r/a.evlog...",
        "Recovery files removed.",
    ]
    assert removal_lines([]) == ["Removing recovery files", "Recovery files removed."]


def test_worker_and_worker_2_do_not_touch_each_others_files(tmp_path):
    one = RecoveryFiles(str(tmp_path), "m", "worker", initializer=False)
    two = RecoveryFiles(str(tmp_path), "m", "worker-2", initializer=False)
    one.write(topology("worker", module="m"))
    two.write(topology("worker-2", module="m"))
    for name in ["m-worker.evlog", "m-worker-2.evlog", "m-worker-2-0000000000000010.evlog"]:
        (tmp_path / name).write_bytes(b"")
    two_files = {n for n in names(tmp_path) if n.startswith("m-worker-2")}
    assert len(two_files) == 7
    assert two.event_logs() == [
        f"{tmp_path}/m-worker-2.evlog",
        f"{tmp_path}/m-worker-2-0000000000000010.evlog",
    ]
    assert one.event_logs() == [f"{tmp_path}/m-worker.evlog"]

    (tmp_path / "m-worker.local-topology").unlink()
    assert isinstance(one.inspect(WORKER_EXPECT), Fresh)
    assert set(names(tmp_path)) == two_files
    assert isinstance(two.inspect(WORKER_EXPECT), Recover)

    one.write(topology("worker", module="m"))
    one.remove_all()
    assert set(names(tmp_path)) == two_files


def test_only_exact_event_log_names_belong_to_a_worker(tmp_path):
    files = initializer_files(tmp_path)
    others = [
        "app-initializer-123.evlog",
        "app-initializer-00000000000000ff0.evlog",
        "app-initializer.evlog.bak",
        "xapp-initializer.evlog",
        "app-initializer.tcp-control.old",
    ]
    for name in others:
        (tmp_path / name).write_bytes(b"")
    assert files.found() == []
    assert files.inspect(EXPECT) == Fresh()
    assert files.remove_all() == []
    assert names(tmp_path) == sorted(others)


def test_event_logs_are_listed_oldest_first_in_a_recovery(tmp_path):
    files = initializer_files(tmp_path)
    files.write(topology(resilience=True))
    for offset in [0x100, 0x2, None]:
        (tmp_path / files.event_log_path(offset)).write_bytes(b"")
    decision = files.inspect(Expectation(FP, True, worker_count=2))
    assert decision.event_logs == (
        f"{tmp_path}/app-initializer.evlog",
        f"{tmp_path}/app-initializer-0000000000000002.evlog",
        f"{tmp_path}/app-initializer-0000000000000100.evlog",
    )


def test_an_event_logs_offset_comes_from_its_name(tmp_path):
    files = worker_files(tmp_path)
    assert files.event_log_offset(files.event_log_path(0x1234)) == 0x1234
    assert files.event_log_offset(files.event_log_path()) == 0
    with pytest.raises(ValueError, match="not an event log"):
        files.event_log_offset(str(tmp_path / "app-worker-3-0000000000000010.evlog"))


def test_the_placement_and_a_change_in_progress_are_recorded(tmp_path):
    files = initializer_files(tmp_path)
    current = Placement(("initializer", "worker-2"), (("window", ("initializer", "worker-2")),))
    target = current.rebalanced(["initializer"])
    written = topology(placement=current, target=target, leaving=("worker-2",))
    files.write(written)
    decision = files.inspect(EXPECT)
    assert decision == Recover(written)
    assert decision.record.target.owners == (("window", ("initializer", "initializer")),)
    assert decision.record.target.version == 2 and decision.record.leaving == ("worker-2",)
