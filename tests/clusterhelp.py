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

from toolhelp import DEADLINE, Tool, closed_port, run_tool

READY = b"Application has successfully initialized."


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
