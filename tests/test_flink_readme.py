"""The README's single-shell walkthrough with machida-flink in place of the two machida commands.

The block is taken from README.md as written; the initializer's ``machida``
becomes ``machida-flink`` (same flags, plus ``--parallelism``), worker-2's
command goes (Flink runs the parallel tasks), and ``wait $init $worker``
becomes ``wait $init``. The strict validator must pass and machida-flink must
exit 0 after ``cluster_shutdown``.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest
from test_readme import on_free_ports, walkthrough


def on_flink(script: str, parallelism: int) -> str:
    commands = re.split(r"(?<!\\)\n", script.strip())
    kept = []
    for command in commands:
        if command.startswith("machida ") and "--name worker-2" in command:
            continue
        if command.startswith("machida ") and "--cluster-initializer" in command:
            command = "machida-flink " + command[len("machida ") :].replace(
                " > init.log", f" --parallelism {parallelism} > init.log"
            )
        kept.append(command.replace("wait $init $worker", "wait $init"))
    return "\n".join(kept) + "\n"


def test_the_flink_script_is_the_readme_one_with_one_command():
    """The transformation itself, so that a README change that defeats it fails here."""
    script = on_flink(walkthrough(), 2)
    assert script.count("machida-flink ") == 1 and "--name worker-2" not in script
    assert "--parallelism 2 > init.log" in script and "wait $init\n" in script
    assert "--cluster-initializer" in script  # machida's own flags stay, and are ignored
    assert "validator -i received.txt -e 100" in script


@pytest.mark.timeout(400)
@pytest.mark.parametrize("parallelism", [1, 2])
def test_readme_walkthrough_on_flink_validates(tmp_path, parallelism):
    script = on_free_ports(on_flink(walkthrough(), parallelism))
    # keep the recorded input and checkpoints in the test's directory instead of /tmp
    script = script.replace(" > init.log", f" --resilience-dir {tmp_path} > init.log")
    env = dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in tmp_path.glob("*.log"))
    assert result.returncode == 0, result.stdout + result.stderr + logs
    assert result.stdout.strip().endswith("Validation successful!")
    lines = (tmp_path / "received.txt").read_text().splitlines()
    assert lines[0].startswith("Listening on ") and len(lines) == 101
    init = (tmp_path / "init.log").read_text()
    assert f"parallelism {parallelism}" in init
    assert "Connections: Finished shutdown procedure." in init
