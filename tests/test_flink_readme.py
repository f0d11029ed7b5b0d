"""The README's single-shell walkthrough with machida-flink in place of the two machida commands.

The block is taken from README.md as written; the initializer's ``machida``
becomes ``machida-flink`` (same flags, plus ``--parallelism``), worker-2's
command goes (Flink runs the parallel tasks), and ``wait $init $worker``
becomes ``wait $init``. The strict validator must pass and machida-flink must
exit 0 after ``cluster_shutdown``.
"""

from __future__ import annotations

import re

import pytest
from test_readme import on_free_ports, run_validated, walkthrough


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
# Parallelism 1 only: the README's own machida-flink block, at parallelism 2, runs in
# tests/test_docs.py (one MiniCluster less).
@pytest.mark.parametrize("parallelism", [1])
def test_readme_walkthrough_on_flink_validates(tmp_path, parallelism):
    script = on_free_ports(on_flink(walkthrough(), parallelism))
    # keep the recorded input and checkpoints in the test's directory instead of /tmp
    script = script.replace(" > init.log", f" --resilience-dir {tmp_path} > init.log")
    run_validated(script, tmp_path, timeout=300)
    init = (tmp_path / "init.log").read_text()
    assert f"parallelism {parallelism}" in init
    assert "Connections: Finished shutdown procedure." in init
