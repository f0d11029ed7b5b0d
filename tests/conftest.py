"""Shared fixtures: writing throw-away application modules for the loader and driver."""

from __future__ import annotations

import itertools
import sys
import textwrap

import pytest

_counter = itertools.count()


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
    import pathlib

    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).parent / "apps"))
