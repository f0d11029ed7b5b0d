"""Every command block of README.md, docs/*.md and examples/*/README.md runs as written, or
says why it does not.

The markup and what the runner changes in a block (free ports, the resilience directory)
are described in ``tests/docblocks.py``. The checks here are: every ``bash`` block is marked
and the exemptions are few; a block of output never starts with a command (a command block
must say ``bash``); and each group of marked blocks, run in order, succeeds.
"""

from __future__ import annotations

import re

import pytest
from docblocks import (
    DOCS,
    ROOT,
    RUN_ELSEWHERE,
    Scenario,
    blocks,
    groups,
    marks_without_a_block,
    unique_groups,
)
from test_multihost import two_hosts  # noqa: F401  (the hosts a host=A/B block runs on)
from test_readme import walkthrough

# A line that starts with one of these, then a flag, an argument or nothing, is a command.
COMMAND = re.compile(
    r"^(make|python3?|\.venv/bin/\w+|\.|machida|machida-flink|sender|data_receiver|"
    r"cluster_shutdown|external_sender|validator|receiver|integration_test|metrics_ui)"
    r"(\s+[-\w./'\"$~]|\s*$)"
)
# The blocks that are not run, each for a reason written next to it; a new one must be
# justified there and counted here.
EXEMPT = 6
MARKED = unique_groups()


def every_block():
    return [block for path in DOCS for block in blocks(path)]


def test_every_command_block_is_run_or_says_why_not():
    unmarked = [b.where for b in every_block() if b.is_command and b.mark is None]
    assert not unmarked, f"command blocks without <!-- run: --> or <!-- not run: -->: {unmarked}"
    exempt = [b for b in every_block() if b.mark == "not run"]
    for block in exempt:
        assert len(block.detail.split()) >= 3, f"{block.where}: say why it is not run"
    assert len(exempt) == EXEMPT, [f"{b.where}: {b.detail}" for b in exempt]
    for path in DOCS:
        assert not marks_without_a_block(path), f"{path}: a mark with no block after it"


def test_a_block_of_output_never_starts_with_a_command():
    """An untagged block is output (or a layout); a command in it would never be run."""
    for block in every_block():
        if block.info == "" and block.text.strip():
            first = block.text.strip().splitlines()[0]
            assert not COMMAND.match(first), f"{block.where} starts with a command: tag it ```bash"


def test_the_blocks_run_elsewhere_are_the_ones_their_tests_read():
    (marked,) = [b for b in every_block() if b.mark == "walkthrough:begin"]
    assert marked.path == "README.md" and marked.text == walkthrough()
    others = [b for b in every_block() if b.mark not in (None, "run", "not run")]
    for block in others:
        assert block.mark in RUN_ELSEWHERE, f"{block.where}: unknown mark {block.mark}"
        assert block.is_command
        assert f"<!-- {block.mark} -->" in (ROOT / RUN_ELSEWHERE[block.mark]).read_text()


def test_marked_python_and_files_are_blocks_of_their_kind():
    for block in every_block():
        if block.mark == "run" and (block.options.get("python") or "file" in block.options):
            assert block.info == "python", f"{block.where}: python/file= on a {block.info} block"


def test_the_licence_is_the_one_pyproject_names():
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: str) -> set[str]:
    text = (ROOT / path).read_text()
    return {slug(m[1]) for m in re.finditer(r"^(?:> )?#+ (.*)$", text, re.M)}


def test_every_link_between_the_docs_leads_somewhere():
    for path in DOCS:
        text = (ROOT / path).read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"https?://", target):
                continue
            file, _, anchor = target.partition("#")
            resolved = (ROOT / path).parent / file if file else ROOT / path
            assert resolved.exists(), f"{path}: {target} does not exist"
            if anchor and resolved.suffix == ".md":
                relative = str(resolved.resolve().relative_to(ROOT))
                assert anchor in anchors(relative), f"{path}: no heading #{anchor} in {relative}"


def test_groups_are_found_and_identical_ones_run_once():
    assert len(MARKED) >= 5
    assert sum(len(members) for members in groups().values()) > sum(map(len, MARKED.values()))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", list(MARKED))
def test_the_blocks_run_as_written(name, tmp_path, request):
    members = MARKED[name]
    hosts = None
    if any("host" in block.options for block in members):
        on_a, on_b = request.getfixturevalue("two_hosts")
        hosts = {"A": on_a, "B": on_b}
    scenario = Scenario(name, members, tmp_path, hosts)
    try:
        scenario.run()
    finally:
        scenario.close()
