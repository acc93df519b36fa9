"""docs/reference/statistics.md defines every statistic, every rule and every threshold, with
the values the code uses."""

from __future__ import annotations

import importlib
import re
import sys

import pytest

from gradwatch.diagnose import RULES, VERDICT_PRECEDENCE
from gradwatch.stats import ALL_STATS, DETAIL_STATS, FAST_STATS
from tests.docs.markdown_blocks import DOCS

PAGE = DOCS / "reference" / "statistics.md"
RULE_MODULES = [sys.modules[rule.__module__] for rule in RULES]
SHARED = [
    importlib.import_module(m)
    for m in ("gradwatch.diagnose._view", "gradwatch.diagnose._flow",
              "gradwatch.diagnose._precursors", "gradwatch.verdicts")
]
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])")


def text() -> str:
    return PAGE.read_text(encoding="utf-8")


@pytest.mark.parametrize("stat", ALL_STATS)
def test_every_statistic_is_defined(stat):
    rows = [line for line in text().splitlines() if line.startswith(f"| `{stat}` |")]
    assert rows, f"statistics.md has no table row for `{stat}`"
    tier = "fast" if stat in FAST_STATS else "detail" if stat in DETAIL_STATS else None
    if tier is not None:
        assert f"| {tier} |" in rows[0], f"statistics.md must call `{stat}` a {tier} statistic"


@pytest.mark.parametrize("module", RULE_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_every_rule_has_a_section(module):
    kind = module.__name__.rsplit(".", 1)[1]
    assert f"### `{kind}`" in text(), f"statistics.md has no '### `{kind}`' section"
    assert f"Module `{module.__name__}`" in text()


def _constants():
    for module in RULE_MODULES + SHARED:
        for name, value in vars(module).items():
            if name.isupper() and not name.startswith("_"):
                if isinstance(value, int | float) and not isinstance(value, bool):
                    yield pytest.param(name, value, id=name)


@pytest.mark.parametrize(("name", "value"), list(_constants()))
def test_every_threshold_is_given_with_its_value(name, value):
    lines = [line for line in text().splitlines() if f"`{name}`" in line]
    assert lines, f"statistics.md does not mention the threshold `{name}` (= {value})"
    numbers = [float(n) for line in lines for n in NUMBER.findall(line.replace(f"`{name}`", ""))]
    assert any(n == pytest.approx(value, rel=1e-9, abs=0) for n in numbers), (
        f"statistics.md gives `{name}` without its value {value!r} on the same line: {lines}"
    )


def test_remedy_names_of_every_rule_are_listed():
    names = {r for m in RULE_MODULES for r in getattr(m, "REMEDIES", ())}
    for name in sorted(names):
        assert f"`{name}`" in text(), f"remedy name `{name}` missing from statistics.md"


def test_verdict_order_is_the_code_s():
    expected = ", ".join(f"`{k}`" for k in VERDICT_PRECEDENCE)
    assert expected in " ".join(text().split()), f"the verdict section must list {expected}"
