"""The README and the documentation's first pages say what the code does: how often each
statistic is recorded (from the registry's tiers and the Monitor's default), how to rerun the
ten-line snippet, and why the set-up command pins torch."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from gradwatch.monitor import Monitor
from gradwatch.stats import DETAIL_STATS, FAST_STATS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PAGES = {name: (ROOT / name).read_text(encoding="utf-8")
         for name in ("README.md", "docs/index.md", "docs/tutorial.md")}


def detail_default() -> int:
    return inspect.signature(Monitor.__init__).parameters["detail_every"].default


def schedule_rows() -> dict[str, str]:
    """README "What is recorded": statistic -> its default schedule, as written."""
    table = README[README.index("## What is recorded"):]
    table = table[:table.index("\n\n", table.index("| statistic"))]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        for stat in re.findall(r"`(\w+)`", cells[0]):
            rows[stat] = cells[-1]
    return rows


@pytest.mark.parametrize("stat", sorted(schedule_rows()))
def test_readme_schedule_is_the_registry_tier(stat):
    written = schedule_rows()[stat]
    if stat in FAST_STATS:
        assert written == "every step", (stat, written)
    elif stat in DETAIL_STATS:
        assert written == f"every {detail_default()}th recorded step", (stat, written)
    else:
        pytest.fail(f"the README lists {stat}, which is neither a fast nor a detail statistic")


def test_backprop_norm_is_not_said_to_be_recorded_every_step():
    assert "backprop_norm" in DETAIL_STATS and "backprop_norm" in schedule_rows()
    for name, text in PAGES.items():
        flat = " ".join(text.split())
        # "records, for every layer and at every step, ... back-propagated signal" was false
        assert "for every layer and at every step" not in flat, name
        assert "records every layer at every step" not in flat, name


def test_the_snippet_says_how_to_rerun_it():
    snippet = README[README.index("## In ten lines"):README.index("## Command line")]
    assert "overwrite=True" in snippet and "new directory" in snippet


def test_the_setup_command_explains_its_torch_pin():
    section = README[README.index("## Two commands"):README.index("Run the tests:")]
    pin = re.search(r"pip install torch==([\d.]+)", section).group(1)
    assert f"Why the pinned torch: {pin}" in " ".join(section.split())
    assert "any torch from 2.2" in section
    assert '"torch>=2.2' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
