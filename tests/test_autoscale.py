"""A running cluster grows and shrinks (autoscale), on real processes and loopback sockets.

A cluster starts with the initializer alone (or two workers) running
sequence_window with resilience under a paced stream; workers join with
``machida --join`` and leave with ``cluster_shrinker``; some are killed with
SIGKILL at a phase of the change and started again with their own command.
Every run ends with the validator over what the receiver got: strict (no
loss, no repeat) when nothing crashed, ``-a`` after a crash, and never a
window that restarts from zeroes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from clusterhelp import Cluster
from test_resilience import RESILIENCE, finish_and_check, odd_restarts, stream
from toolhelp import Tool, closed_port, run_tool, wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
JOINED = b"***Successfully joined cluster!***"
RESUMED = b"~~~Resuming message processing.~~~"
FAST = ("--stop-pause", "0")
PAUSED = ("--stop-pause", "1_500_000_000")  # a window in which the world is stopped


class Growing(Cluster):
    """A :class:`Cluster` whose workers may also join it (``--join``) and leave it."""

    def __init__(self, tmp_path, workers: int = 1, extra=(*RESILIENCE, *FAST), **kw):
        super().__init__(tmp_path, workers=workers, extra=extra, **kw)
        self.joiners: dict[str, list[str]] = {}

    def worker_args(self, index: int) -> list[str]:
        while len(self.externals) <= index:  # a worker beyond the first count (a rescale)
            self.externals.append(f"127.0.0.1:{closed_port()}")
        return super().worker_args(index)

    def join(self, name: str, count: int = 1, via: str | None = None, *more: str) -> Tool:
        """``machida --join`` through the initializer's control address (or ``via``)."""
        args = self.joiners.get(name)
        if args is None:
            external = f"127.0.0.1:{closed_port()}"
            self.externals.append(external)
            args = [
                "--application-module", self.app, "--in", f"127.0.0.1:{self.in_port}",
                "--out", self.out, "--metrics", self.metrics, "--join", via or self.control,
                "--name", name, "--worker-count", str(count), "--external", external,
                "--resilience-dir", str(self.dir), "--ponythreads=1", *self.extra, *more,
            ]  # fmt: skip
            self.joiners[name] = args
        tool = Tool("machida", *args, cwd=self.dir)
        self.procs[name] = tool
        return tool

    def shrinker(self, *args: str, via: int = 0) -> str:
        result = run_tool("cluster_shrinker", "--external", self.externals[via], *args)
        assert result.returncode == 0, result.stderr.decode() + self.report()
        return result.stdout.decode().strip()

    def query(self, kind: str, via: int = 0) -> dict:
        result = run_tool("external_sender", "-e", self.externals[via], "-t", kind, "--json")
        assert result.returncode == 0, result.stderr.decode()
        return json.loads(result.stdout)

    def counts(self) -> dict[str, int]:
        return self.query("partition-count-query")["state_partitions"]["Sequence Window"]


def finish(cluster: Growing, sender: Tool, strict: bool) -> None:
    finish_and_check(cluster, sender, strict=strict)


def test_a_cluster_grows_and_shrinks_under_a_stream_and_loses_and_repeats_nothing(tmp_path):
    """The initializer alone, a paced 20,000-value stream: worker-2 joins, later leaves; every
    window exactly once (strict validator), the odd key's state carried both ways."""
    with Growing(tmp_path).start() as cluster, stream(cluster) as sender:
        cluster.wait_windows(4_000)
        assert cluster.counts() == {"initializer": 2}
        joiner = cluster.join("worker-2")
        joiner.wait_stdout(lambda out: JOINED in out and RESUMED in out)
        init = cluster.wait_for("initializer", RESUMED).decode()
        lines = ["***Worker worker-2 attempting to join the cluster. Sent necessary "
                 "information.***", "Migrating partitions to worker-2",
                 "--All new workers have acked migration batch complete",
                 "~~~Resuming message processing.~~~"]  # fmt: skip
        positions = [init.index(line) for line in lines]
        assert positions == sorted(positions), init
        assert cluster.counts() == {"initializer": 1, "worker-2": 1}
        at = len(cluster.windows())
        cluster.wait_windows(at + 3_000)  # worker-2 writes the odd windows now
        assert cluster.shrinker("--workers", "worker-2", via=1) == (
            "Cluster shrink response: Shrinking by 1 workers!")  # fmt: skip
        assert joiner.wait(60) == 0, cluster.report()
        leaver = joiner.stdout.decode()
        assert "~~~Initiating shrink~~~" in leaver, leaver
        assert "Migrating all partitions to 1 remaining workers" in leaver
        assert not list(tmp_path.glob("sequence_window-worker-2*")), "its files are removed"
        assert cluster.counts() == {"initializer": 2}
        finish(cluster, sender, strict=True)
        assert cluster.shutdown() == {"initializer": 0, "worker-2": 0}, cluster.report()


def test_state_off_initializer_keeps_the_keys_off_it_through_a_grow(tmp_path):
    """--state-off-initializer: the two keys sit on worker-2, then on worker-2 and a joiner;
    the initializer runs the source only, and every window arrives exactly once."""
    extra = (*RESILIENCE, *FAST, "--state-off-initializer")
    with Growing(tmp_path, workers=2, extra=extra).start() as cluster, stream(cluster) as sender:
        assert cluster.counts() == {"initializer": 0, "worker-2": 2}
        cluster.wait_windows(4_000)
        joiner = cluster.join("worker-3")
        joiner.wait_stdout(lambda out: JOINED in out and RESUMED in out)
        cluster.wait_for("initializer", RESUMED)
        assert cluster.counts() == {"initializer": 0, "worker-2": 1, "worker-3": 1}
        assert joiner.stdout.count(JOINED) == 1, joiner.stdout
        finish(cluster, sender, strict=True)
        ignored = b"WARNING: --state-off-initializer ignored: the cluster initializer places"
        assert ignored in joiner.stderr and ignored in cluster.procs["worker-2"].stderr
        assert ignored not in cluster.procs["initializer"].stderr
        assert cluster.shutdown() == {"initializer": 0, "worker-2": 0, "worker-3": 0}


def test_a_joiner_killed_just_after_it_joined_restarts_with_its_own_command(tmp_path):
    with Growing(tmp_path).start() as cluster, stream(cluster) as sender:
        cluster.wait_windows(3_000)
        cluster.join("worker-2").wait_stdout(lambda out: RESUMED in out)
        cluster.wait_windows(len(cluster.windows()) + 1_000)
        assert cluster.kill("worker-2") == -9
        again = cluster.join("worker-2")
        again.wait_stdout(lambda out: b"|~~ - Recovery COMPLETE - ~~|" in out)
        assert b"Recovering from recovery files!" in again.stdout
        finish(cluster, sender, strict=False)
        assert cluster.shutdown() == {"initializer": 0, "worker-2": 0}, cluster.report()


def restart_initializer(cluster: Growing, sender: Tool) -> Tool:
    """The initializer killed: start it again, then the sender after what it had accepted."""
    assert sender.wait(30) != 0  # its connection broke
    init = cluster.start_initializer()
    out = init.wait_stdout(lambda o: b"Application has successfully initialized." in o).decode()
    accepted = int(out.split("source had accepted ")[1].split()[0])
    return Tool("sender", "-h", f"127.0.0.1:{cluster.in_port}", "-m", str(20_000 - accepted),
                "-v", str(accepted), "-y", "-g", "12", "-u", "-w", "-s", "50", "-i",
                "10_000_000", cwd=cluster.dir)  # fmt: skip


@pytest.mark.parametrize(("victim", "when"), [
    ("worker-2", b"~~~Stopping message processing for state migration.~~~"),
    ("initializer", b"~~~Stopping message processing for state migration.~~~"),
    ("worker-2", b"Migrating partitions to worker-2"),
    ("initializer", b"Migrating partitions to worker-2"),
])  # fmt: skip
def test_a_kill_9_during_a_grow_loses_nothing(tmp_path, victim, when):
    """SIGKILL of the joiner or of the initializer once the world has stopped (the pause
    before the keys move), or once the keys are moving; both are started again with their
    own commands and the change completes."""
    with Growing(tmp_path, extra=(*RESILIENCE, *PAUSED)).start() as cluster:
        sender = stream(cluster).__enter__()
        try:
            cluster.wait_windows(3_000)
            joiner = cluster.join("worker-2")
            cluster.wait_for("initializer", when)
            assert cluster.kill(victim) == -9
            if victim == "initializer":
                sender = restart_initializer(cluster, sender)
            else:
                cluster.join("worker-2")
            cluster.procs["worker-2"].wait_stdout(lambda out: RESUMED in out)
            cluster.wait_for("initializer", RESUMED)
            assert cluster.counts() == {"initializer": 1, "worker-2": 1}
            finish(cluster, sender, strict=False)
        finally:
            sender.__exit__(None, None, None)
        assert joiner is not None
        assert cluster.shutdown() == {"initializer": 0, "worker-2": 0}, cluster.report()


@pytest.mark.parametrize("when", [
    b"~~~Stopping message processing for leaving workers.~~~",
    b"Migrating all partitions to 1 remaining workers",
])  # fmt: skip
def test_a_leaving_worker_killed_during_the_shrink_finishes_leaving_after_a_restart(tmp_path, when):
    extra = (*RESILIENCE, *PAUSED)
    with Growing(tmp_path, workers=2, extra=extra).start() as cluster, stream(cluster) as sender:
        cluster.wait_windows(3_000)
        assert (
            cluster.shrinker("--count", "1") == "Cluster shrink response: Shrinking by 1 workers!"
        )
        watch = "initializer" if when.startswith(b"~~~") else "worker-2"
        cluster.wait_for(watch, when)
        assert cluster.kill("worker-2") == -9
        again = cluster.start_worker(1)
        assert again.wait(60) == 0, cluster.report()  # it hands its keys over, then leaves
        assert not list(tmp_path.glob("sequence_window-worker-2*"))
        cluster.wait_for("initializer", RESUMED)
        assert cluster.counts() == {"initializer": 2}
        finish(cluster, sender, strict=False)
        assert cluster.shutdown()["initializer"] == 0, cluster.report()


def test_shrink_refusals_say_why_and_change_nothing(tmp_path):
    with Growing(tmp_path, workers=2, extra=FAST).start() as cluster:
        eligible = "Eligible for shrink: Node count: 1, Nodes: |worker-2,|"
        assert cluster.shrinker("--query") == eligible
        assert cluster.shrinker("--query", via=1) == eligible
        refusals = {
            ("--workers", "initializer"): "initializer cannot leave: the sources are on it.",
            ("--workers", "worker-2,nobody"): "There is no worker named 'nobody'.",
        }
        for args, why in refusals.items():
            assert (
                cluster.shrinker(*args) == f"Cluster shrink response: Invalid shrink targets! {why}"
            )
        shrink = run_tool("external_sender", "-e", cluster.externals[1], "-t", "shrink", "-m", "?")
        assert shrink.stdout.decode().splitlines()[-1] == eligible
        usage = run_tool("cluster_shrinker", "--external", cluster.externals[0], "--query",
                         "--count", "1")  # fmt: skip
        assert usage.returncode == 1
        assert b"You must specify exactly one of --query, --count, or --workers" in usage.stderr
        assert cluster.counts() == {"initializer": 1, "worker-2": 1}
        status = cluster.query("cluster-status-query", via=1)
        assert status == {"processing_messages": True, "worker_names": ["initializer", "worker-2"],
                          "worker_count": 2}  # fmt: skip
        assert cluster.shutdown() == {"initializer": 0, "worker-2": 0}, cluster.report()
    warnings = cluster.procs["initializer"].stderr.decode()
    assert warnings.count("WARNING: shrink refused: Invalid shrink targets!") == 2


PACED = ("-s", "100", "-i", "5_000_000")


def stop_all(cluster: Growing) -> None:
    """SIGTERM every process: each stops alone, keeping its recovery files."""
    for name in [n for n in cluster.procs if n != "initializer"] + ["initializer"]:
        assert cluster.kill(name, signal.SIGTERM) == 0, cluster.report()


def check_windows(cluster: Growing, count: int) -> None:
    wait_until(lambda: {count - 1, count} <= {w[-1] for w in cluster.windows()}, 60, "the end")
    verdict = cluster.validate(count, "-a")
    assert verdict.returncode == 0, verdict.stderr.decode() + cluster.report()
    assert odd_restarts(cluster.windows()) == []


def test_a_cluster_stopped_after_a_grow_restarts_grown_with_the_same_commands(tmp_path):
    with Growing(tmp_path).start() as cluster:
        cluster.send(2_000, *PACED)
        cluster.join("worker-2").wait_stdout(lambda out: RESUMED in out)
        cluster.send(1_000, *PACED, start_from=2_000)
        cluster.wait_windows(3_000)
        stop_all(cluster)
        cluster.start_initializer().wait_stdout(lambda o: b"Recovering from recovery files!" in o)
        cluster.join("worker-2")
        cluster.wait_ready()
        assert cluster.counts() == {"initializer": 1, "worker-2": 1}
        cluster.send(1_000, *PACED, start_from=3_000)
        check_windows(cluster, 4_000)
        assert cluster.shutdown() == {"initializer": 0, "worker-2": 0}, cluster.report()


def test_a_restart_keeps_the_placement_rule_the_cluster_formed_with(tmp_path):
    plain = (*RESILIENCE, *FAST)
    with Growing(tmp_path, workers=2, extra=(*plain, "--state-off-initializer")).start() as cluster:
        cluster.send(2_000, *PACED)
        cluster.wait_windows(2_000)
        stop_all(cluster)
        cluster.extra = plain  # the initializer's command without the flag, this time
        init = cluster.start_initializer()
        cluster.start_worker(1)
        cluster.wait_ready()
        assert cluster.counts() == {"initializer": 0, "worker-2": 2}
        assert b"WARNING: the recorded placement keeps the keys off the initializer" in init.stderr
        cluster.send(1_500, *PACED, start_from=2_000)
        check_windows(cluster, 3_500)
        assert cluster.shutdown() == {"initializer": 0, "worker-2": 0}, cluster.report()


@pytest.mark.parametrize(("before", "after"), [(1, 2), (2, 1)])
def test_a_restart_with_another_worker_count_rescales_and_carries_the_state(tmp_path, before,
                                                                            after):  # fmt: skip
    with Growing(tmp_path, workers=before).start() as cluster:
        cluster.send(3_000, *PACED)
        cluster.wait_windows(3_000)
        stop_all(cluster)
        cluster.start_initializer("--worker-count", str(after))  # the last one given counts
        worker = cluster.start_worker(1)  # worker-2: its command as before, or a new worker
        cluster.wait_ready()
        cluster.wait_for("initializer", RESUMED)
        if after < before:
            assert worker.wait(60) == 0, cluster.report()  # it handed its key over and left
            assert cluster.counts() == {"initializer": 2}
        else:
            worker.wait_stdout(lambda out: RESUMED in out)
            assert cluster.counts() == {"initializer": 1, "worker-2": 1}
        cluster.send(2_000, *PACED, start_from=3_000)
        check_windows(cluster, 5_000)
        assert cluster.shutdown()["initializer"] == 0, cluster.report()


def wait_lines(cluster: Growing, count: int) -> None:
    cluster.receiver.wait_stdout(lambda out: out.count(b"\n") - 1 >= count, 60)


def test_word_count_grows_by_four_at_once_and_shrinks_by_two_under_a_stream(tmp_path):
    """27 keys (a first letter each): four joiners of one round take their share, two workers
    leave later; the example's own validator checks every word's counts, in order."""
    work = tmp_path / "word_count"
    shutil.copytree(EXAMPLES / "word_count", work)
    passes = 30
    expected = {w: n * passes for w, n in json.loads((work / "_expected.json").read_text()).items()}
    (work / "expected.json").write_text(json.dumps(expected))
    with Growing(work, app="word_count", extra=FAST).start() as cluster:
        lines = 35 * passes
        sender = Tool("sender", "-h", f"127.0.0.1:{cluster.in_port}", "--file", "count_this.txt",
                      "--repeat", "-m", str(lines), "-s", "2", "-i", "10_000_000", "-w",
                      cwd=work)  # fmt: skip
        with sender:
            wait_lines(cluster, 2_000)
            joiners = [cluster.join(f"worker-{i}", 4) for i in range(2, 6)]
            for joiner in joiners:
                joiner.wait_stdout(lambda out: JOINED in out and RESUMED in out)
            cluster.wait_for("initializer", b"--All new workers have acked migration batch")
            counts = cluster.query("partition-count-query")["state_partitions"]
            tallies = counts["tallies by first letter"]
            assert tallies["initializer"] == 6 and sorted(tallies.values()) == [5, 5, 5, 6, 6]
            joined = cluster.query("cluster-status-query")["worker_names"]  # in join order
            assert sorted(joined) == ["initializer", *(f"worker-{i}" for i in range(2, 6))]
            wait_lines(cluster, len(cluster.lines()) + 2_000)
            assert len(cluster.lines()) < sum(expected.values())  # under the stream
            answer = cluster.shrinker("--count", "2", via=3)
            assert answer == "Cluster shrink response: Shrinking by 2 workers!"
            for name in joined[1:3]:  # the first two that may leave, as Wallaroo chose
                assert cluster.procs[name].wait(60) == 0, cluster.report()
            assert sender.wait(120) == 0
        total = sum(expected.values())
        wait_lines(cluster, total)
        framed = b"".join(struct.pack(">I", len(line)) + line for line in cluster.lines())
        (work / "received.bin").write_bytes(framed)
        check = subprocess.run([sys.executable, "_test/validate.py", "--expected",
                                "expected.json", "--output", "received.bin"], cwd=work,
                               capture_output=True, text=True)  # fmt: skip
        assert check.returncode == 0, check.stdout + cluster.report()
        assert sorted(cluster.query("partition-count-query")["state_partitions"][
            "tallies by first letter"].values()) == [9, 9, 9]  # fmt: skip
        assert cluster.shutdown(via=0)["initializer"] == 0


def test_the_readme_grow_and_shrink_block_runs_as_written(tmp_path):
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"<!-- autoscale:begin -->\n```bash\n(.*?)```", text, re.S)
    assert block, "README lost its autoscale block"
    ports = {port: str(closed_port()) for port in ("7002", "7010", "5001", "6000", "6001",
                                                   "5050", "5051")}  # fmt: skip
    script = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports.get(m[1], m[1])}",
                    block.group(1))  # fmt: skip
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    result = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=180)  # fmt: skip
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in tmp_path.glob("*.log"))
    assert result.returncode == 0, result.stdout + result.stderr + logs
    assert result.stdout.strip().endswith("Validation successful!"), result.stdout
    assert '"initializer": 1, "worker-2": 1' in result.stdout
    assert "Cluster shrink response: Shrinking by 1 workers!" in result.stdout
    assert (
        "Migrating all partitions to 1 remaining workers" in (tmp_path / "worker.log").read_text()
    )


def test_joins_and_shrinks_in_any_order_under_a_stream(tmp_path):
    """worker-2 and worker-3 join one after the other (the second takes no key: two keys),
    worker-2 leaves (its key moves to worker-3, between two joined workers), then worker-3
    leaves; strict verdict."""
    with Growing(tmp_path).start() as cluster, stream(cluster) as sender:
        cluster.wait_windows(2_000)
        for name in ("worker-2", "worker-3"):
            cluster.join(name).wait_stdout(lambda out: RESUMED in out)
        assert cluster.counts() == {"initializer": 1, "worker-2": 1, "worker-3": 0}
        for name, left in (("worker-2", {"initializer": 1, "worker-3": 1}),
                           ("worker-3", {"initializer": 2})):  # fmt: skip
            cluster.wait_windows(len(cluster.windows()) + 2_000)
            cluster.shrinker("--workers", name)
            assert cluster.procs[name].wait(60) == 0, cluster.report()
            wait_until(lambda left=left: cluster.counts() == left, 30, f"{name} gone")
        finish(cluster, sender, strict=True)
        assert cluster.shutdown()["initializer"] == 0, cluster.report()


def test_the_worker_a_joiner_contacted_killed_after_it_answered(tmp_path):
    """worker-3 joins through worker-2, which is killed once it has sent worker-3 on to the
    initializer; worker-2 restarts with its command, and the join completes."""
    contact = f"127.0.0.1:{closed_port()}"
    with Growing(tmp_path, workers=2) as cluster:
        cluster.start_receiver()
        cluster.start_initializer()
        cluster.start_worker(1, "--my-control", contact)  # an address a joiner can be given
        cluster.wait_ready()
        with stream(cluster) as sender:
            cluster.wait_windows(3_000)
            joiner = cluster.join("worker-3", via=contact)
            cluster.wait_for("worker-2", b"***Worker worker-3 attempting to join the cluster.")
            assert cluster.kill("worker-2") == -9
            cluster.start_worker(1, "--my-control", contact)
            joiner.wait_stdout(lambda out: JOINED in out and RESUMED in out)
            assert cluster.counts() == {"initializer": 1, "worker-2": 1, "worker-3": 0}
            finish(cluster, sender, strict=False)
        assert set(cluster.shutdown().values()) == {0}, cluster.report()
