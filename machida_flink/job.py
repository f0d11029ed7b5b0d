"""Building the Flink job from the plan and running it: embedded MiniCluster or a session cluster.

PyFlink builds the job in a JVM it starts beside this process (its "gateway").
Here that JVM is started with its stderr forwarded to ours, so what the
application's callbacks print there (thread mode runs them inside that JVM,
through pemja) is seen, and with ``PYTHONPATH`` naming this interpreter's
``site-packages``, which the embedded interpreter needs to find PyFlink.
Without ``--jobmanager`` the job runs in a MiniCluster inside that JVM; with
it, the JVM only compiles the job and submits it over REST, shipping the
application module, the ``machida`` and ``machida_flink`` packages and the jar.
"""

from __future__ import annotations

import os
import shutil
import site
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import machida
import machida_flink
from machida.app.plan import AppPlan
from machida_flink.options import MAX_PARALLELISM
from machida_flink.translate import Shape

GATEWAY_START_S = 60.0
# A failing task restarts this many times, a second apart, before the job fails.
RESTART_ATTEMPTS = 30


@dataclass(frozen=True)
class JobOptions:
    """``restore``: a savepoint or retained checkpoint to start from; ``claim``: the job
    owns it (a run's own checkpoints and rescale savepoints, which Flink deletes once a newer
    checkpoint subsumes them) or only reads it (a savepoint a user keeps)."""

    parallelism: int
    checkpoint_interval_ms: int
    state_backend: str
    checkpoint_dir: Path
    jobmanager: tuple[str, int] | None
    max_parallelism: int = MAX_PARALLELISM
    restore: Path | None = None
    claim: bool = False


def start_gateway() -> subprocess.Popen:
    """Start PyFlink's JVM, stderr forwarded; later ``get_gateway()`` calls connect to it."""
    from pyflink.pyflink_gateway_server import launch_gateway_server_process

    info_dir = tempfile.mkdtemp(prefix="machida-flink-")
    info = Path(info_dir) / "gateway-port"
    env = dict(os.environ)
    env["_PYFLINK_CONN_INFO_PATH"] = str(info)
    env["PYTHONPATH"] = os.pathsep.join(
        [*site.getsitepackages(), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    proc = launch_gateway_server_process(
        env, ["-c", "org.apache.flink.client.python.PythonGatewayServer", "local"]
    )
    threading.Thread(target=_forward, args=(proc.stderr,), daemon=True).start()
    deadline = time.monotonic() + GATEWAY_START_S
    try:
        while not (info.exists() and info.stat().st_size >= 4):
            if proc.poll() is not None:
                raise RuntimeError(f"Flink's JVM exited with status {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Flink's JVM did not start within {GATEWAY_START_S:.0f} s")
            time.sleep(0.05)
        os.environ["PYFLINK_GATEWAY_PORT"] = str(struct.unpack("!I", info.read_bytes()[:4])[0])
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        shutil.rmtree(info_dir, ignore_errors=True)
    return proc


# PyFlink starts its JVM with an option for a module Java 17 does not have; the JVM
# says so at every start, which is noise for a user.
_JVM_NOISE = b"WARNING: Unknown module: jdk.proxy2 specified to --add-opens"


def _forward(pipe) -> None:
    out = sys.stderr.buffer
    for line in iter(pipe.readline, b""):
        if not line.startswith(_JVM_NOISE):
            out.write(line)
            out.flush()


def python_bundle(module: ModuleType, into: Path) -> Path:
    """A directory holding what the TaskManagers import: the application (its top
    package) and our two packages. PyFlink puts a shipped directory itself on the
    workers' path, so packages are shipped inside one."""
    top = sys.modules[module.__name__.split(".")[0]]
    path = Path(top.__file__)
    app = path.parent if path.name == "__init__.py" else path
    bundle = into / "python"
    bundle.mkdir(parents=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for source in (app, Path(machida.__file__).parent, Path(machida_flink.__file__).parent):
        target = bundle / source.name
        if source.is_dir():
            shutil.copytree(source, target, ignore=skip)
        else:
            shutil.copy2(source, target)
    return bundle


def configuration(options: JobOptions, name: str):
    from pyflink.common import Configuration

    conf = Configuration()
    settings = {
        "python.execution-mode": "thread",
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "parallelism.default": str(options.parallelism),
        "pipeline.max-parallelism": str(options.max_parallelism),
        "pipeline.name": name,
        "execution.checkpointing.interval": f"{options.checkpoint_interval_ms} ms",
        "execution.checkpointing.storage": "filesystem",
        "execution.checkpointing.dir": options.checkpoint_dir.resolve().as_uri(),
        # a job that is cancelled, or whose client dies, leaves its newest checkpoint to
        # resume from; a job that finishes (drained, or stopped with a savepoint) does not
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "state.backend.type": options.state_backend,
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": str(RESTART_ATTEMPTS),
        "restart-strategy.fixed-delay.delay": "1 s",
    }
    if options.restore is not None:
        settings["execution.state-recovery.path"] = options.restore.resolve().as_uri()
        settings["execution.state-recovery.claim-mode"] = "CLAIM" if options.claim else "NO_CLAIM"
    for key, value in settings.items():
        conf.set_string(key, value)
    return conf


def environment(options: JobOptions, name: str, jar: Path):
    """A local (MiniCluster) environment, or a remote one for ``--jobmanager``, shipping ``jar``."""
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.java_gateway import get_gateway

    conf = configuration(options, name)
    if options.jobmanager is None:
        env = StreamExecutionEnvironment.get_execution_environment(conf)
        env.add_jars(jar.resolve().as_uri())
        return env
    from pyflink.util.java_utils import add_jars_to_context_class_loader

    add_jars_to_context_class_loader([jar.resolve().as_uri()])
    gateway = get_gateway()
    jars = gateway.new_array(gateway.jvm.String, 1)
    jars[0] = str(jar.resolve())
    host, port = options.jobmanager
    j_env = gateway.jvm.org.apache.flink.streaming.api.environment.StreamExecutionEnvironment
    return StreamExecutionEnvironment(
        j_env.createRemoteEnvironment(host, port, conf._j_configuration, jars)
    )


def build_job(env, plan: AppPlan, shape: Shape, wiring, ingress: tuple[str, int],
              token: str) -> None:  # fmt: skip
    """Add the application's operators to ``env`` (see :mod:`machida_flink.translate`).

    ``token`` (hex) is the ingress's secret for this run: the sources present it when
    they subscribe."""
    from pyflink.common import Types, WatermarkStrategy
    from pyflink.datastream.connectors import Sink, Source
    from pyflink.java_gateway import get_gateway

    from machida_flink.stages import SINK_RECORD, SourceStage, StateStage, flink_key

    jvm = get_gateway().jvm
    feeds: dict[str, list] = {name: [] for name in shape.order}
    outputs = []
    for p, pipeline in enumerate(plan.pipelines):
        streams = get_gateway().new_array(jvm.int, 1)
        streams[0] = p
        source = Source(jvm.machida.flink.IngressSource(ingress[0], ingress[1], streams, token))
        raw = env.from_source(
            source, WatermarkStrategy.no_watermarks(), f"ingress '{pipeline.name}'",
            Types.PRIMITIVE_ARRAY(Types.BYTE()),
        ).uid(f"ingress-{p}")  # fmt: skip
        staged = (
            raw.process(SourceStage(wiring, p), output_type=SINK_RECORD)
            .name(f"decode and route '{pipeline.name}'")
            .uid(f"source-stage-{p}")
        )
        outputs.append(staged)
        if shape.first[p] is not None:
            feeds[shape.first[p]].append(staged.get_side_output(wiring.tag(shape.first[p])))
    for index, name in enumerate(shape.order):
        inputs = feeds[name]
        merged = inputs[0].union(*inputs[1:]) if len(inputs) > 1 else inputs[0]
        out = (
            merged.key_by(flink_key, key_type=Types.INT())
            .process(StateStage(wiring, name), output_type=SINK_RECORD)
            .name(f"state '{name}'")
            .uid(f"state-{index}")
        )
        outputs.append(out)
        for target in shape.order:
            if name in shape.feeds[target]:
                feeds[target].append(out.get_side_output(wiring.tag(target)))
    addresses = get_gateway().new_array(jvm.String, len(shape.sink_addresses))
    for i, address in enumerate(shape.sink_addresses):
        addresses[i] = address
    merged = outputs[0].union(*outputs[1:]) if len(outputs) > 1 else outputs[0]
    merged.sink_to(Sink(jvm.machida.flink.FramedSocketSink(addresses))).name("sinks").uid("sinks")


def key_table(plan: AppPlan, parallelism: int, max_parallelism: int = MAX_PARALLELISM):
    """Per state, the Flink key of each key index, for a run's first start at
    ``parallelism`` (key i on subtask i mod parallelism); see ``KeyPlacement.java``."""
    from pyflink.java_gateway import get_gateway

    from machida_flink.restore import KeyTable

    placement = get_gateway().jvm.machida.flink.KeyPlacement
    keys = tuple(
        (name, tuple(placement.keys(len(keys), max_parallelism, parallelism)))
        for name, keys in plan.state_keys().items()
    )
    return KeyTable(max_parallelism, keys)
