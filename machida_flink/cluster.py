"""A local standalone Flink session cluster from the distribution inside the apache-flink wheel.

``python -m machida_flink.cluster start --taskmanagers N`` (``make flink-cluster``)
starts a JobManager and N TaskManagers, each its own JVM, with Flink's own
daemon scripts; ``add --taskmanagers N`` (``make flink-cluster-add``) starts N
more, for a job to be rescaled onto; ``stop`` (``make flink-cluster-stop``)
stops them all. Everything
the cluster writes (configuration, logs, pid files) lives in one directory,
``.flink`` by default (``--dir`` or ``FLINK_CLUSTER_DIR``). The distribution
is used as installed, except that the cluster's ``lib`` also holds
``flink-python`` (from ``opt``), which Python jobs need on a session cluster,
and the TaskManagers get this interpreter's ``site-packages`` on
``PYTHONPATH``, which thread mode's embedded interpreter needs to find PyFlink.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import site
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from machida.console import os_reason
from machida_flink.jar import JarError, flink_home

START_S = 90.0
DEFAULT_DIR = ".flink"


class ScriptError(Exception):
    """One of Flink's daemon scripts failed; the message names it."""


def cluster_dir(given: str | None = None) -> Path:
    return Path(given or os.environ.get("FLINK_CLUSTER_DIR") or DEFAULT_DIR).resolve()


def _java_opts(home: Path) -> str:
    """The JVM options the distribution's own configuration gives every Flink process."""
    text = (home / "conf" / "config.yaml").read_text()
    found = re.search(r"^\s+all: (--add-\S.*)$", text, re.M)
    return found.group(1).strip() if found else ""


def prepare(directory: Path, rest_port: int, rpc_port: int, slots: int) -> dict:
    """Write the cluster's configuration and library directory; returns the scripts' env."""
    home = flink_home()
    conf, lib = directory / "conf", directory / "lib"
    for sub in (conf, lib, directory / "log", directory / "pid"):
        sub.mkdir(parents=True, exist_ok=True)
    for jar in [*sorted((home / "lib").glob("*.jar")), *(home / "opt").glob("flink-python-*.jar")]:
        link = lib / jar.name
        if not link.exists():
            link.symlink_to(jar)
    for name in ("log4j.properties", "log4j-console.properties", "log4j-cli.properties"):
        (conf / name).write_bytes((home / "conf" / name).read_bytes())
    settings = {
        "env.java.opts.all": _java_opts(home),
        "jobmanager.bind-host": "127.0.0.1",
        "jobmanager.rpc.address": "127.0.0.1",
        "jobmanager.rpc.port": rpc_port,
        "jobmanager.memory.process.size": "1024m",
        "taskmanager.bind-host": "127.0.0.1",
        "taskmanager.host": "127.0.0.1",
        "taskmanager.numberOfTaskSlots": slots,
        "taskmanager.memory.process.size": "1536m",
        "rest.address": "127.0.0.1",
        "rest.bind-address": "127.0.0.1",
        "rest.port": rest_port,
        # a job's slots spread over the TaskManagers, so losing one loses part of every job
        "taskmanager.load-balance.mode": "SLOTS",
        # notice a dead TaskManager within seconds, not the default 50
        "heartbeat.interval": 2000,
        "heartbeat.timeout": 10000,
    }
    lines = [f"{key}: {json.dumps(value) if isinstance(value, str) else value}"
             for key, value in settings.items()]  # fmt: skip
    (conf / "config.yaml").write_text("\n".join(lines) + "\n")
    (directory / "rest-port").write_text(str(rest_port))
    return environment(directory)


def environment(directory: Path) -> dict:
    home = flink_home()
    env = dict(os.environ)
    env.update(
        FLINK_HOME=str(home),
        FLINK_CONF_DIR=str(directory / "conf"),
        FLINK_LIB_DIR=str(directory / "lib"),
        FLINK_LOG_DIR=str(directory / "log"),
        FLINK_PID_DIR=str(directory / "pid"),
        PYTHONPATH=os.pathsep.join(site.getsitepackages()),
    )
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _script(name: str, *args: str, env: dict) -> None:
    script = flink_home() / "bin" / name
    done = subprocess.run(["bash", str(script), *args], env=env, stdout=subprocess.DEVNULL)
    if done.returncode != 0:
        raise ScriptError(f"{script} {' '.join(args)} exited with status {done.returncode}; "
                          f"see {env['FLINK_LOG_DIR']}")  # fmt: skip


def overview(rest_port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/overview", timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


def taskmanagers(rest_port: int) -> list[dict]:
    """The REST API's view of the TaskManagers (slots, free slots, ...)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/taskmanagers", timeout=5) as r:
        return json.loads(r.read())["taskmanagers"]


def pids(directory: Path, role: str = "taskexecutor") -> list[int]:
    """Process ids of a role (``taskexecutor``, ``standalonesession``) in start order,
    from the daemon scripts' pid file."""
    found = sorted((directory / "pid").glob(f"*-{role}.pid"))
    if not found:
        return []
    return [int(word) for word in found[0].read_text().split()]


def start(directory: Path, taskmanagers: int, slots: int, rest_port: int, rpc_port: int) -> int:
    env = prepare(directory, rest_port, rpc_port, slots)
    try:
        _script("jobmanager.sh", "start", env=env)
        for _ in range(taskmanagers):
            _script("taskmanager.sh", "start", env=env)
    except ScriptError as err:
        _abandon(directory, env)
        print(f"Error: {err}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + START_S
    while True:
        info = overview(rest_port)
        if info and info.get("taskmanagers", 0) >= taskmanagers:
            break
        if time.monotonic() > deadline:
            _abandon(directory, env)
            print(f"Error: the cluster did not come up within {START_S:.0f} s (stopped what "
                  f"had started); see {directory / 'log'}", file=sys.stderr)  # fmt: skip
            return 1
        time.sleep(0.25)
    print(f"Flink cluster up: a JobManager and {taskmanagers} TaskManager(s) of {slots} slot(s)")
    print(f"Web UI and REST: http://127.0.0.1:{rest_port}  (logs in {directory / 'log'})")
    print(f"Submit with: machida-flink --jobmanager 127.0.0.1:{rest_port} ...")
    return 0


def add(directory: Path, count: int) -> int:
    """Start ``count`` more TaskManagers in a running cluster; exit status."""
    if not (directory / "conf" / "config.yaml").exists():
        print(f"Error: no Flink cluster configured in {directory}; start one first (make "
              f"flink-cluster)", file=sys.stderr)  # fmt: skip
        return 1
    rest_port = int((directory / "rest-port").read_text())
    info = overview(rest_port)
    if info is None:
        print(f"Error: the cluster in {directory} does not answer on 127.0.0.1:{rest_port}",
              file=sys.stderr)  # fmt: skip
        return 1
    wanted = info.get("taskmanagers", 0) + count
    env = environment(directory)
    for _ in range(count):
        _script("taskmanager.sh", "start", env=env)
    deadline = time.monotonic() + START_S
    while (overview(rest_port) or {}).get("taskmanagers", 0) < wanted:
        if time.monotonic() > deadline:
            print(f"Error: the new TaskManager(s) did not register within {START_S:.0f} s; see "
                  f"{directory / 'log'}", file=sys.stderr)  # fmt: skip
            return 1
        time.sleep(0.25)
    info = overview(rest_port) or {}
    print(
        f"Flink cluster: {info.get('taskmanagers')} TaskManager(s), "
        f"{info.get('slots-total')} task slot(s), {info.get('slots-available')} free"
    )
    return 0


def _abandon(directory: Path, env: dict) -> None:
    """Stop a cluster that did not come up: the scripts first, then any process they missed."""
    started = pids(directory, "taskexecutor") + pids(directory, "standalonesession")
    for name in ("taskmanager.sh", "jobmanager.sh"):
        with contextlib.suppress(ScriptError):
            _script(name, "stop-all", env=env)
    for pid in started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def stop(directory: Path) -> int:
    if not (directory / "conf" / "config.yaml").exists():
        print(f"No Flink cluster configured in {directory}")
        return 0
    env = environment(directory)
    _script("taskmanager.sh", "stop-all", env=env)
    _script("jobmanager.sh", "stop-all", env=env)
    print("Flink cluster stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m machida_flink.cluster")
    parser.add_argument("command", choices=("start", "add", "stop"))
    parser.add_argument(
        "--dir", help=f"cluster directory (default $FLINK_CLUSTER_DIR or {DEFAULT_DIR})"
    )
    parser.add_argument(
        "--taskmanagers", type=int, help="TaskManagers to start (start: default 2, add: 1)"
    )
    parser.add_argument("--slots", type=int, default=2, help="task slots per TaskManager")
    parser.add_argument("--rest-port", type=int, default=8081)
    parser.add_argument("--rpc-port", type=int, default=6123)
    opts = parser.parse_args(argv)
    directory = cluster_dir(opts.dir)
    try:
        if opts.command == "stop":
            return stop(directory)
        if opts.command == "add":
            return add(directory, opts.taskmanagers or 1)
        if overview(opts.rest_port) is not None:
            print(f"Error: something already answers on 127.0.0.1:{opts.rest_port}",
                  file=sys.stderr)  # fmt: skip
            return 1
        taskmanagers = 2 if opts.taskmanagers is None else opts.taskmanagers
        return start(directory, taskmanagers, opts.slots, opts.rest_port, opts.rpc_port)
    except (ScriptError, JarError) as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"Error: {err.filename or directory}: {os_reason(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
