"""Exactly-once output on a real cluster: kill -9 anyone, any number of times, FILE holds each
window once (the strict validator, without -a)."""

from __future__ import annotations

import os
import pathlib
import random
import re
import signal
import subprocess
import sys

import test_autoscale as autoscale
from clusterhelp import ExactlyOnceCluster
from test_resilience import STREAM, finish_and_check, stream
from toolhelp import Tool, closed_port, run_tool, wait_until

N = 100_000
PACE = ("-s", "100", "-i", "5_000_000")  # 20 000 values a second
ACCEPTED = re.compile(rb"source had accepted (\d+) record")
RECOVERED = b"|~~ - Recovery COMPLETE - ~~|"


def sender(cluster: ExactlyOnceCluster, count: int, start_from: int = 0) -> Tool:
    return Tool("sender", "-h", f"127.0.0.1:{cluster.in_port}", "-m", str(count), "-y", "-g",
                "12", "-u", "-w", "-v", str(start_from), *PACE, cwd=cluster.dir)  # fmt: skip


def chaos_seed() -> int:
    """The schedule's seed: MACHIDA_CHAOS_SEED to replay one, else a new one (printed)."""
    seed = int(os.environ.get("MACHIDA_CHAOS_SEED") or random.randrange(2**32))
    print(f"chaos seed {seed} (MACHIDA_CHAOS_SEED={seed} replays this schedule)")
    return seed


def schedule(rng: random.Random) -> list[tuple[str, int]]:
    """Ten kill -9s of random workers, the initializer among them, and one of the receiver,
    in a random order, each once FILE holds a random number of windows (increasing)."""
    victims = [rng.choice(["initializer", "worker-2"]) for _ in range(10)]
    if "initializer" not in victims:
        victims[rng.randrange(10)] = "initializer"
    events = [*victims, "receiver"]
    rng.shuffle(events)
    moments = sorted(rng.sample(range(N // 20, N * 9 // 10), len(events)))
    return list(zip(events, moments))


def test_ten_kill_9s_of_workers_and_one_of_the_receiver_leave_each_window_once(tmp_path):
    seed = chaos_seed()
    with ExactlyOnceCluster(tmp_path) as cluster:
        cluster.start()
        stream = sender(cluster, N)
        done = []
        try:
            for victim, moment in schedule(random.Random(seed)):
                cluster.wait_windows(moment, 60)
                assert cluster.kill(victim) == -9
                restarted = cluster.restart(victim)
                done.append(victim)
                print(f"kill -9 {victim} once FILE held {moment} windows")
                if victim == "receiver":
                    continue
                restarted.wait_stdout(lambda out: RECOVERED in out, 60)
                if victim == "initializer":
                    stream.wait()  # its connection broke (or it had sent everything)
                    accepted = int(ACCEPTED.search(restarted.stdout).group(1))
                    cluster.ended.append(stream)
                    stream = sender(cluster, N - accepted, accepted)
            assert stream.wait(120) == 0, stream.report()
            wait_until(lambda: cluster.held() >= N, 60, f"{N} windows in FILE")
        except AssertionError as err:
            raise AssertionError(f"seed {seed}, after {done}: {err}\n{cluster.report()}") from None
        verdict = cluster.validate(N)
        assert verdict.returncode == 0, f"seed {seed}: {verdict.stderr.decode()}"
        assert cluster.held() == N  # each window once (100 000 % 12 == 4: none emitted early)
        assert cluster.shutdown() == {"initializer": 0, "worker-2": 0}, cluster.report()


class Growing(autoscale.Growing, ExactlyOnceCluster):
    """A growing and shrinking cluster with exactly-once output, FILE read as it is written."""


def test_a_keys_numbering_moves_with_it_through_grows_shrinks_and_kill_9s(tmp_path):
    """The initializer alone; worker-2 joins (key 1 moves to it) and is killed once it emits;
    worker-3 joins; worker-2 leaves, killed while it hands key 1 over to worker-3, and
    restarted with its command. Each window once, in order."""
    extra = ("--stop-pause", "300_000_000")
    with Growing(tmp_path, extra=extra).start() as cluster, stream(cluster) as sender:
        cluster.wait_windows(3_000)
        cluster.join("worker-2").wait_stdout(lambda out: autoscale.RESUMED in out)
        cluster.wait_windows(cluster.held() + 2_000)
        assert cluster.kill("worker-2") == -9
        cluster.join("worker-2").wait_stdout(lambda out: RECOVERED in out)
        cluster.join("worker-3").wait_stdout(lambda out: autoscale.RESUMED in out)
        assert cluster.counts() == {"initializer": 1, "worker-2": 1, "worker-3": 0}
        cluster.wait_windows(cluster.held() + 2_000)
        cluster.shrinker("--workers", "worker-2")
        cluster.wait_for("worker-2", b"Migrating all partitions to 2 remaining workers")
        assert cluster.kill("worker-2") == -9
        assert cluster.join("worker-2").wait(60) == 0, cluster.report()  # hands over, leaves
        wait_until(lambda: cluster.counts() == {"initializer": 1, "worker-3": 1}, 30, "moved")
        finish_and_check(cluster, sender, strict=True)
        assert cluster.held() == STREAM
        assert set(cluster.shutdown().values()) == {0}, cluster.report()


# -- the modes do not mix ----------------------------------------------------------------------


def test_exactly_once_without_resilience_is_one_line(tmp_path):
    result = run_tool("machida", "--application-module", "sequence_window", "--metrics",
                      "127.0.0.1:1", "--cluster-initializer", "--data", "127.0.0.1:2",
                      "--exactly-once", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        "Error: --exactly-once needs --run-with-resilience: output is kept in the event log "
        "until its receiver holds it."
    ]


def test_a_worker_of_the_other_mode_is_refused_and_so_are_files_of_the_other_mode(tmp_path):
    with ExactlyOnceCluster(tmp_path) as cluster:
        cluster.start_receiver()
        cluster.start_initializer()
        plain = [a for a in cluster.worker_args(1) if a != "--exactly-once"]
        refused = Tool("machida", *plain, cwd=tmp_path)
        assert refused.wait() == 1, refused.report()
        assert b"Error: the initializer refused this worker" in refused.stderr
        assert b"resilience=True, exactly-once" in refused.stderr, refused.report()
        cluster.start_worker(1)
        cluster.wait_ready()
        cluster.send(100, "-s", "100", "-i", "0")
        cluster.wait_windows(100)
        assert cluster.kill("worker-2", signal.SIGTERM) == 0  # stopped alone, its files kept
        again = Tool("machida", *plain, cwd=tmp_path)
        assert again.wait() == 1, again.report()
        err = again.stderr.decode()
        assert "(resilience mode: recorded 'on, exactly-once', now 'on')" in err, err
        assert "Traceback" not in err
        cluster.start_worker(1).wait_stdout(lambda out: RECOVERED in out)
        assert cluster.validate(100).returncode == 0
        assert set(cluster.shutdown().values()) == {0}, cluster.report()


def test_the_readme_exactly_once_block_runs_as_written(tmp_path):
    text = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"<!-- exactly_once:begin -->\n```bash\n(.*?)```", text, re.S)
    assert block, "README lost its exactly-once block"
    ports = {port: str(closed_port()) for port in ("7002", "7010", "5001", "6000", "6001",
                                                   "5050", "5051")}  # fmt: skip
    script = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports.get(m[1], m[1])}",
                    block.group(1))  # fmt: skip
    env = dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}")
    result = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in tmp_path.glob("*.log"))
    assert result.returncode == 0, result.stdout + result.stderr + logs
    assert result.stdout.strip().endswith("Validation successful!"), result.stdout + logs
    assert "Recovering from recovery files!" in (tmp_path / "worker.log").read_text()
    assert "Traceback" not in result.stderr + logs
