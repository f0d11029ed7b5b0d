"""A real machida cluster for tests: data_receiver, the initializer and workers as processes.

Every process is started with ``sys.executable -m ...`` on loopback ports the
test picked, in the test's temporary directory (which is also the
``--resilience-dir``). Waits are for printed lines or windows against a
deadline; :meth:`Cluster.report` gives every child's output for assertion
messages.
"""

from __future__ import annotations

import signal
import subprocess
import time

from toolhelp import DEADLINE, Tool, closed_port, run_tool

READY = b"Application has successfully initialized."
EXACTLY_ONCE = ("--run-with-resilience", "--exactly-once")


class Cluster:
    """The seed README's cluster: a framed data_receiver, the initializer, and workers."""

    def __init__(self, tmp_path, workers: int = 2, app: str = "sequence_window", extra=()):
        self.dir = tmp_path
        self.app = app
        self.count = workers
        self.extra = list(extra)
        self.in_port = closed_port()
        self.control = f"127.0.0.1:{closed_port()}"
        self.data = f"127.0.0.1:{closed_port()}"
        self.metrics = f"127.0.0.1:{closed_port()}"
        self.externals = [f"127.0.0.1:{closed_port()}" for _ in range(workers)]
        self.receiver: Tool | None = None
        self.out = ""
        self.procs: dict[str, Tool] = {}
        self.ended: list[Tool] = []  # processes killed and started again, for the report

    # -- processes --------------------------------------------------------------------------

    def start_receiver(self) -> Tool:
        self.receiver = Tool("data_receiver", "-l", "127.0.0.1:0", "--framed", cwd=self.dir)
        self.out = f"127.0.0.1:{self.receiver.listening_port()}"
        return self.receiver

    def common(self, index: int) -> list[str]:
        return [
            "--application-module", self.app, "--in", f"127.0.0.1:{self.in_port}",
            "--out", self.out, "--metrics", self.metrics, "--control", self.control,
            "--external", self.externals[index], "--resilience-dir", str(self.dir),
            "--ponythreads=1", *self.extra,
        ]  # fmt: skip

    def initializer_args(self) -> list[str]:
        return [*self.common(0), "--data", self.data, "--worker-count", str(self.count),
                "--cluster-initializer"]  # fmt: skip

    def worker_args(self, index: int) -> list[str]:
        return [*self.common(index), "--name", self.name(index)]

    @staticmethod
    def name(index: int) -> str:
        return "initializer" if index == 0 else f"worker-{index + 1}"

    def start_initializer(self, *more: str) -> Tool:
        tool = Tool("machida", *self.initializer_args(), *more, cwd=self.dir)
        self.procs["initializer"] = tool
        return tool

    def start_worker(self, index: int, *more: str) -> Tool:
        tool = Tool("machida", *self.worker_args(index), *more, cwd=self.dir)
        self.procs[self.name(index)] = tool
        return tool

    def start(self, sink: str | None = None) -> Cluster:
        """Receiver (or the given sink address), initializer, then the workers, until ready."""
        if sink is None:
            self.start_receiver()
        else:
            self.out = sink
        try:
            self.start_initializer()
            for index in range(1, self.count):
                self.start_worker(index)
            self.wait_ready()
        except BaseException:
            self.close()  # the caller's with-block never began: nothing else would stop them
            raise
        return self

    def wait_ready(self, timeout: float = DEADLINE) -> None:
        try:
            self.procs["initializer"].wait_stdout(lambda out: READY in out, timeout)
        except AssertionError:
            raise AssertionError(f"the cluster never became ready\n{self.report()}") from None

    # -- driving it -------------------------------------------------------------------------

    def send(self, messages: int, *args: str, start_from: int = 0) -> None:
        """seq N with the given pacing, to completion."""
        result = run_tool(
            "sender", "-h", f"127.0.0.1:{self.in_port}", "-m", str(messages), "-y", "-g", "12",
            "-u", "-w", "-v", str(start_from), *args, cwd=self.dir,
        )  # fmt: skip
        assert result.returncode == 0, f"sender failed: {result.stderr!r}\n{self.report()}"

    def lines(self) -> list[bytes]:
        out = self.receiver.stdout.split(b"\n")[1:]  # after "Listening on ..."
        return [line for line in out[:-1]]  # the last piece is an unfinished line

    def windows(self) -> list[list[int]]:
        return [[int(x) for x in line.strip(b"[]").split(b",")] for line in self.lines()]

    def wait_windows(self, count: int, timeout: float = DEADLINE) -> list[list[int]]:
        self.receiver.wait_stdout(lambda out: out.count(b"\n") - 1 >= count, timeout)
        return self.windows()

    def wait_for(self, name: str, text: bytes, stream: str = "stdout", timeout=DEADLINE):
        tool = self.procs[name]
        waiter = tool.wait_stdout if stream == "stdout" else tool.wait_stderr
        return waiter(lambda out: text in out, timeout)

    def shutdown(self, via: int = 0) -> dict[str, int]:
        """cluster_shutdown to a process's external channel; returns every exit status."""
        result = run_tool("cluster_shutdown", self.externals[via])
        assert result.returncode == 0, result.stderr
        return {name: tool.wait() for name, tool in self.procs.items()}

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        return self.procs[name].stop(sig)

    def validate(self, expected: int, *flags: str) -> subprocess.CompletedProcess:
        path = self.dir / "received.txt"
        path.write_bytes(self.receiver.stdout)
        return run_tool("validator", "-e", str(expected), *flags, "-i", str(path))

    def report(self) -> str:
        parts = [f"=== {name}\n{tool.report()}" for name, tool in self.procs.items()]
        parts += [f"=== {tool.args[0]} (ended)\n{tool.report()}" for tool in self.ended]
        if self.receiver is not None:
            parts.append(f"=== data_receiver\n{self.receiver.report()[-2000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for tool in [*self.procs.values(), self.receiver]:
            if tool is not None and tool.proc.poll() is None:
                tool.proc.kill()
                tool.proc.wait(10)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ExactlyOnceCluster(Cluster):
    """The cluster with ``--run-with-resilience --exactly-once`` on every worker and a
    ``data_receiver --framed --exactly-once --output FILE`` on a fixed port, so that a
    receiver killed can be started again with the same command. Windows are read from FILE."""

    def __init__(self, tmp_path, workers: int = 2, app: str = "sequence_window", extra=()):
        super().__init__(tmp_path, workers, app, (*EXACTLY_ONCE, *extra))
        self.out = f"127.0.0.1:{closed_port()}"
        self.file = tmp_path / "received.txt"

    def receiver_args(self) -> list[str]:
        return ["--listen", self.out, "--framed", "--exactly-once", "--output", str(self.file),
                "--no-write"]  # fmt: skip

    def start_receiver(self) -> Tool:
        if self.receiver is not None:
            self.ended.append(self.receiver)
        self.receiver = Tool("data_receiver", *self.receiver_args(), cwd=self.dir)
        self.receiver.wait_stdout(lambda out: b"Listening on" in out)
        return self.receiver

    def restart(self, name: str) -> Tool:
        """Start a killed process again with its own command."""
        if name == "receiver":
            return self.start_receiver()
        self.ended.append(self.procs[name])
        if name == "initializer":
            return self.start_initializer()
        return self.start_worker(int(name.rsplit("-", 1)[1]) - 1)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        if name == "receiver":
            return self.receiver.stop(sig)
        return super().kill(name, sig)

    def payloads(self) -> list[bytes]:
        """The windows in FILE so far, as written (a record still being written is left out)."""
        data = self.file.read_bytes() if self.file.exists() else b""
        out, pos = [], 0
        while pos + 12 <= len(data):
            end = pos + 12 + int.from_bytes(data[pos : pos + 4], "big")
            if end > len(data):
                break
            out.append(data[pos + 12 : end])
            pos = end
        return out

    def windows(self) -> list[list[int]]:
        return [[int(x) for x in p.strip(b"[]").split(b",")] for p in self.payloads()]

    def held(self) -> int:
        """How many windows FILE holds."""
        return len(self.payloads())

    def wait_windows(self, count: int, timeout: float = DEADLINE) -> list[list[int]]:
        deadline = time.monotonic() + timeout
        while self.held() < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"FILE never held {count} windows\n{self.report()}")
            time.sleep(0.02)
        return self.windows()

    def validate(self, expected: int, *flags: str) -> subprocess.CompletedProcess:
        return run_tool("validator", "-e", str(expected), *flags, "-i", str(self.file))
