"""Shared fixtures: writing throw-away application modules for the loader and driver."""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

_counter = itertools.count()

# Hypothesis keeps its example database and a cache of the constants it found in
# our source files (with their absolute paths) in its home directory, by default
# ./.hypothesis. Keep that machine-specific state out of the project tree.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "sequence-window-hypothesis")

# Workers find the cluster secret under $XDG_CONFIG_HOME (creating it on first use). The test
# processes and every worker they start share one of their own, in a directory of this run,
# so that the suite neither reads nor writes the secret of whoever runs it.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="sequence-window-config-")
atexit.register(shutil.rmtree, os.environ["XDG_CONFIG_HOME"], ignore_errors=True)


@pytest.fixture
def make_app(tmp_path, monkeypatch):
    """Write ``source`` as a fresh module in a temporary directory; return its name.

    The directory becomes the working directory, which the loader puts on
    ``sys.path`` as machida did.
    """
    monkeypatch.chdir(tmp_path)
    created = []

    def write(source: str, name: str | None = None) -> str:
        name = name or f"app_{next(_counter)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        created.append(name)
        return name

    yield write
    for name in created:
        sys.modules.pop(name, None)


@pytest.fixture
def test_apps(monkeypatch):
    """Put tests/apps on sys.path for the small example applications there."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "apps"))
