"""The README's single-shell walkthrough, run as written (on free ports, in a temp dir)."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

from toolhelp import closed_port

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
README_PORTS = (7002, 7010, 5001, 6000, 6001, 5050, 5051)


def walkthrough() -> str:
    text = README.read_text()
    block = re.search(r"<!-- walkthrough:begin -->\n```bash\n(.*?)```", text, re.S)
    assert block, "README lost its walkthrough block"
    return block.group(1)


def on_free_ports(script: str) -> str:
    """The README's ports replaced by free ones, in one pass (a new port is never rewritten)."""
    ports = {str(port): str(closed_port()) for port in README_PORTS}
    return re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports.get(m[1], m[1])}", script)


def run_validated(script: str, tmp_path: pathlib.Path, timeout: float) -> None:
    """Run ``script`` with this Python's console scripts on PATH; it must end validated, with
    the receiver's 100 windows after its first line."""
    env = dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in tmp_path.glob("*.log"))
    assert result.returncode == 0, result.stdout + result.stderr + logs
    assert result.stdout.strip().endswith("Validation successful!")
    lines = (tmp_path / "received.txt").read_text().splitlines()
    assert lines[0].startswith("Listening on ") and len(lines) == 101


def test_readme_walkthrough_runs_verbatim_and_validates(tmp_path):
    script = on_free_ports(walkthrough())
    # keep recovery files in the test's directory instead of the default /tmp
    script = script.replace("--ponythreads=1 >", f"--ponythreads=1 --resilience-dir {tmp_path} >")
    run_validated(script, tmp_path, timeout=120)
    assert "Connections: Finished shutdown procedure." in (tmp_path / "init.log").read_text()
