"""What a machida-flink run keeps to be resumed or restarted, on its own: real files, no JVM.

The record of a run, a savepoint's description and its refusals, the choice of
what a resumed run restores, and the command line refusing a savepoint or a
crashed run that is not this application's, before any JVM starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from toolhelp import closed_port

from machida.app.loader import load_plan
from machida_flink.files import RunFiles
from machida_flink.restore import (
    METADATA,
    RESCALES,
    SAVEPOINT_INFO,
    Identity,
    KeyTable,
    RestoreError,
    RunRecord,
    SavepointInfo,
    local_path,
    prune,
    restore_point,
)
from machida_flink.stream import Base
from machida_flink.translate import shape

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["sequence_window", "--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002"]
TABLE = KeyTable(128, (("Sequence Window", (13, 113)),))


def identity() -> Identity:
    _, plan = load_plan("sequence_window", ARGS)
    return Identity.of(plan, shape(plan))


def test_the_identity_names_what_a_job_state_is_laid_out_by():
    found = identity()
    assert found.application == "Sequence Window"
    assert found.pipelines == ("Sequence Window",)
    assert found.states == (("Sequence Window", ("0", "1")),)
    assert found.difference(Identity.from_json(found.to_json())) is None


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"application": "Other"}, "application: recorded 'Other', now 'Sequence Window'"),
        ({"pipelines": ["a", "b"]}, "pipelines: recorded ['a', 'b'], now ['Sequence Window']"),
        ({"states": [["Totals", ["0", "1"]]]}, "states: recorded ['Totals'], now ['Sequence"),
        ({"states": [["Sequence Window", ["0", "1", "2"]]]}, "keys: recorded {'Sequence Win"),
    ],
)
def test_an_identity_says_the_first_thing_it_disagrees_on(change, said):
    ours = identity()
    theirs = Identity.from_json({**ours.to_json(), **change})
    assert ours.difference(theirs).startswith(said)


def test_a_run_record_reads_back_as_written(tmp_path):
    record = RunRecord(identity(), TABLE, 3, "ab" * 16, "/x/chk-4", "/y/savepoint-1", (42, 7), True)
    record.save(tmp_path / "r.run")
    assert RunRecord.load(tmp_path / "r.run") == record
    (tmp_path / "bad.run").write_text(json.dumps({"format": 99}))
    with pytest.raises(RestoreError, match="not the record of a run this version can read"):
        RunRecord.load(tmp_path / "bad.run")


def savepoint(directory: Path, info: SavepointInfo | None = None) -> Path:
    directory.mkdir(parents=True)
    (directory / METADATA).write_bytes(b"flink")
    if info is not None:
        info.save(directory)
    return directory


def test_a_savepoint_description_reads_back_for_the_same_application(tmp_path):
    info = SavepointInfo(identity(), TABLE, 2, (Base(4096, 100, 3),))
    found = SavepointInfo.load(savepoint(tmp_path / "sp", info), identity())
    assert found == info


def test_what_is_not_this_applications_savepoint_is_refused_with_one_line(tmp_path):
    other = Identity("Word Count", ("Split",), (("counts", ("'a'", "'b'")),))
    cases = {
        tmp_path / "nothing": "no Flink savepoint there (no _metadata file)",
        savepoint(tmp_path / "flinks"): f"not a savepoint taken by machida-flink (no "
        f"{SAVEPOINT_INFO}); take one with external_sender -t savepoint",
        savepoint(tmp_path / "other", SavepointInfo(other, TABLE, 2, (Base(),))): "is a "
        "savepoint of another application or topology (application: recorded 'Word Count', "
        "now 'Sequence Window')",
    }
    for path, said in cases.items():
        with pytest.raises(RestoreError) as caught:
            SavepointInfo.load(path, identity())
        assert said in str(caught.value) and "\n" not in str(caught.value)


def completed(path: Path, at: float) -> Path:
    path.mkdir(parents=True)
    (path / METADATA).write_bytes(b"flink")
    os.utime(path / METADATA, (at, at))
    return path


def test_a_resumed_run_restores_the_newest_checkpoint_or_rescale_savepoint(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    record = RunRecord(identity(), TABLE, 2, "j2", "/gone/savepoint", None)
    assert restore_point(checkpoints, record) is None
    started = completed(tmp_path / "user-savepoint", 100)
    assert restore_point(checkpoints, replace(record, restore=str(started))) == started
    completed(checkpoints / "j1" / "chk-7", 200)
    (checkpoints / "j1" / "chk-8").mkdir()  # in progress when the run died: no metadata
    rescale = completed(checkpoints / RESCALES / "savepoint-j1-1", 300)
    assert restore_point(checkpoints, record) == rescale
    newest = completed(checkpoints / "j2" / "chk-2", 400)
    completed(checkpoints / "j2" / "chk-10", 350)  # numbers compare as numbers
    assert restore_point(checkpoints, record) == checkpoints / "j2" / "chk-10"
    os.utime(newest / METADATA, (500, 500))
    assert restore_point(checkpoints, record) == checkpoints / "j2" / "chk-10"


def test_pruning_keeps_what_is_restored_and_what_holds_it(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    keep = completed(checkpoints / RESCALES / "savepoint-b", 2)
    completed(checkpoints / RESCALES / "savepoint-a", 1)
    completed(checkpoints / "j1" / "chk-3", 1)
    prune(checkpoints, keep)
    assert sorted(p.name for p in checkpoints.rglob("*")) == [METADATA, RESCALES, keep.name]
    prune(checkpoints, None)
    assert list(checkpoints.rglob("*")) == [checkpoints / RESCALES]


def test_flink_locations_become_paths():
    assert local_path("file:/tmp/a/savepoint-1") == Path("/tmp/a/savepoint-1")
    assert local_path("file:///tmp/a") == Path("/tmp/a")
    assert local_path("/tmp/b") == Path("/tmp/b")


def machida_flink(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "machida_flink", "--application-module", "sequence_window",
         "--in", f"127.0.0.1:{closed_port()}", "--out", f"127.0.0.1:{closed_port()}",
         "--resilience-dir", str(tmp_path), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_another_applications_savepoint_is_refused_before_any_jvm_starts(tmp_path):
    other = Identity("Sequence Window", ("Sequence Window",), (("Windows", ("0", "1")),))
    path = savepoint(tmp_path / "sp", SavepointInfo(other, TABLE, 2, (Base(),)))
    result = machida_flink(tmp_path, "--from-savepoint", str(path))
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"Error: --from-savepoint {path} is a savepoint of another application or topology "
        f"(states: recorded ['Windows'], now ['Sequence Window'])\n"
    )
    assert "Flink job" not in result.stdout


def test_a_crashed_run_of_another_application_is_refused_with_the_way_out(tmp_path):
    files = RunFiles(tmp_path, "sequence_window", "initializer")
    other = Identity("Sequence Window", ("Sequence Window",), (("Sequence Window", ("0",)),))
    RunRecord(other, TABLE, 2).save(files.record)
    result = machida_flink(tmp_path)
    assert result.returncode == 1, result.stderr
    first, second = result.stderr.splitlines()
    assert first.startswith(f"Error: {tmp_path} holds a run of 'sequence_window-initializer-"
                            f"flink' that did not stop cleanly, of another application or "
                            f"topology (keys: recorded")  # fmt: skip
    assert second == f"To remove them: rm -rf {files.record}"
    result = machida_flink(tmp_path, "--from-savepoint", str(tmp_path / "sp"))
    assert result.returncode == 1 and "did not stop cleanly" in result.stderr


# -- how a run begins, from the files it finds (machida_flink.start) ---------------------------


def config(tmp_path: Path, *extra: str):
    from machida_flink.options import parse

    return parse(["machida-flink", "--application-module", "sequence_window", "--in",
                  "127.0.0.1:7010", "--out", "127.0.0.1:7002", "--resilience-dir",
                  str(tmp_path), *extra])  # fmt: skip


def left_behind(tmp_path: Path, record: RunRecord, accepted: bytes, base: Base) -> RunFiles:
    """The files of a run that stopped without removing them: one stream holding
    ``accepted`` whose base is ``base``, and ``record``."""
    from machida_flink.stream import write_base

    files = RunFiles(tmp_path, "sequence_window", "initializer")
    stream = files.stream(0)
    stream.write_bytes(accepted)
    write_base(stream, base)
    record.save(files.record)
    return files


def start_of(tmp_path: Path, files: RunFiles, *extra: str):
    from machida_flink.start import plan_start

    started = plan_start(config(tmp_path, *extra), files, identity(), 1)
    started.close()
    return started


def frames_of(values: range) -> bytes:
    from machida_flink import ingress_log as log

    return log.entry(log.OPENED, 1, b"x:1") + log.frames_entry(
        1, [v.to_bytes(8, "big") for v in values]
    )


def test_a_crashed_run_resumes_from_its_newest_checkpoint_with_every_record(tmp_path):
    record = RunRecord(identity(), TABLE, 3, "j1")
    files = left_behind(tmp_path, record, frames_of(range(500)), Base())
    newest = completed(files.checkpoints / "j1" / "chk-4", 10)
    started = start_of(tmp_path, files, "--parallelism", "1")
    assert (started.kind, started.restore, started.claim) == ("resume", newest, True)
    assert started.parallelism == 3 and started.table == TABLE
    assert [s.records for s in started.streams] == [500] and started.dangling == [{1}]


def test_a_run_that_had_drained_when_it_stopped_is_not_resumed(tmp_path, capsys):
    accepted = frames_of(range(500))
    record = RunRecord(identity(), TABLE, 2, "j1", stopping=True)
    files = left_behind(tmp_path, record, accepted, Base(len(accepted), 500, 1))
    started = start_of(tmp_path, files)
    assert started.kind == "fresh" and started.streams[0].size == 0
    assert not files.record.exists()
    assert capsys.readouterr().err == (
        "WARNING: the previous run of 'sequence_window-initializer-flink' had drained its job "
        "when it stopped: nothing is left to resume, and its files are discarded\n"
    )


def test_a_run_whose_checkpoints_are_gone_is_refused_not_replayed_from_nothing(tmp_path):
    accepted = frames_of(range(500))
    files = left_behind(tmp_path, RunRecord(identity(), TABLE, 2, "j1"), accepted,
                        Base(len(accepted) // 2, 250, 1))  # fmt: skip
    with pytest.raises(RestoreError, match="cannot be resumed: no checkpoint of its jobs is left"):
        start_of(tmp_path, files)
