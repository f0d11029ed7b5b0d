"""``make run`` needs no npm: on a copy of the checkout without the chart library, with an
``npm`` first on PATH that records being called and fails, it must end validated and never
call npm. The copy uses the project's virtual environment (``VENV=``, its stamp taken as up
to date with ``make -o``), so only the Makefile's targets and the demo are exercised; the
control case shows that the fake npm does catch a target that needs the library.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What a fresh clone does not have: the environment, build outputs, caches, the chart library.
NOT_IN_A_CLONE = (".git", ".venv", "build", "vendor", "run", "run-flink", ".flink", "bench",
                  "__pycache__", "*.egg-info", ".*_cache", ".hypothesis")  # fmt: skip


def checkout_without_npm(tmp_path: Path) -> tuple[Path, dict, Path]:
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(*NOT_IN_A_CLONE))
    fake = tmp_path / "bin"
    fake.mkdir()
    marker = tmp_path / "npm-was-called"
    (fake / "npm").write_text(f'#!/bin/sh\necho "$@" >> {marker}\nexit 127\n')
    (fake / "npm").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):  # as a user's make, not one inside make test
        env.pop(name, None)
    return checkout, env, marker


def make(checkout: Path, env: dict, *targets: str) -> subprocess.CompletedProcess:
    venv = Path(sys.prefix)
    stamp = venv / ".installed"
    assert stamp.is_file(), f"{venv} was not made by make install"
    return subprocess.run(
        ["make", "-o", str(stamp), f"VENV={venv}", *targets], cwd=checkout, env=env,
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_make_run_validates_without_npm_or_the_chart_library(tmp_path):
    checkout, env, marker = checkout_without_npm(tmp_path)
    result = make(checkout, env, "run", "RUN_ARGS=--free-ports --messages 200")
    assert result.returncode == 0, result.stdout + result.stderr
    verdict = "validator -e 200:        Validation successful!"
    assert verdict in [line.strip() for line in result.stdout.splitlines()]
    assert not marker.exists(), f"make run called npm: {marker.read_text()}"
    assert not (checkout / "metrics_ui" / "static" / "vendor").exists()


def test_the_metrics_ui_library_target_is_the_one_that_calls_npm(tmp_path):
    checkout, env, marker = checkout_without_npm(tmp_path)
    result = make(checkout, env, "metrics-ui-install")
    assert result.returncode != 0
    assert marker.read_text().startswith("pack --silent chart.js@"), result.stderr
