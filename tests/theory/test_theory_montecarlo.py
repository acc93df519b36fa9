"""gw.theory.predict against brute-force Monte Carlo (benchmarks/theory_mc): each layer within
max(0.1 decade, 5% of the log) of the geometric mean over freshly drawn models.

The quick configurations run by default; every configuration (≥ 20: residual MLPs with tanh,
ReLU and GELU branches, α from 1/√L to 1, depth 12–50; pre-LN and post-LN
nn.TransformerEncoder with 6 and 24 layers; GPT-2 and BERT from a config (with and without
their default dropout); with and without a
final norm; BatchNorm residual nets; DeepNorm; VGG-16 with BatchNorm, pre-activation
ResNet-18/34 and the original ResNet-18/34/50 with ReLU after each addition) under ``-m slow``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.theory_mc import CONFIGS, check_config  # noqa: E402

QUICK = [c for c in CONFIGS if c.quick]
FULL = [c for c in CONFIGS if not c.quick]


def test_the_check_covers_what_the_theory_claims():
    predicted = [c for c in CONFIGS if c.expect == "predicted"]
    assert len(predicted) >= 20
    families = {c.family for c in predicted}
    assert {
        "residual MLP",
        "nn.TransformerEncoder",
        "Hugging Face",
        "BatchNorm residual",
        "DeepNorm",
        "pre-norm MLP",
        "conv nets with BatchNorm",
    } <= families
    assert any(c.expect == "uncertain" for c in CONFIGS)


def _needs(config) -> None:
    """Hugging Face configurations need transformers (an optional extra; CI installs it)."""
    if config.family == "Hugging Face":
        pytest.importorskip("transformers", reason="pip install gradwatch[transformers]")


def _assert_config(config):
    result = check_config(config)
    if config.expect == "uncertain":
        assert result["verdict"] == "uncertain" and result["reason"], result["reason"]
        return
    assert result["verdict"] != "uncertain", result["reason"]
    bad = [r for r in result["layers"] if not r["ok"]]
    assert not bad, (
        f"{config.name}: {len(bad)} of {result['n_layers']} layers outside the tolerance, "
        f"e.g. {bad[:3]}"
    )


@pytest.mark.parametrize("config", QUICK, ids=lambda c: c.name)
def test_quick_configurations_match_monte_carlo(config):
    _needs(config)
    _assert_config(config)


@pytest.mark.slow
@pytest.mark.parametrize("config", FULL, ids=lambda c: c.name)
def test_every_configuration_matches_monte_carlo(config):
    _needs(config)
    _assert_config(config)


def test_the_docs_table_is_the_recorded_results():
    import json

    from benchmarks.theory_mc.table import markdown

    results = json.loads(Path(ROOT, "benchmarks/results/theory_mc.json").read_text())["configs"]
    assert {r["name"] for r in results} == {c.name for c in CONFIGS}
    assert all(r["passed"] for r in results)
    page = Path(ROOT, "docs/explain/theory.md").read_text()
    assert markdown(results) in page, "regenerate: python benchmarks/theory_mc.py --table ..."
    n_layers = sum(r["n_layers"] for r in results if r["expect"] == "predicted")
    n_configs = sum(r["expect"] == "predicted" for r in results)
    assert f"{n_layers:,} layers of {n_configs} configurations".replace(",", " ") in page


def test_the_table_marks_a_disagreement():
    from benchmarks.theory_mc.table import row

    layer = {"layer": "a", "predicted": -1.0, "measured": -1.5, "sd": 0.1, "tolerance": 0.1}
    result = {
        "name": "x", "description": "d", "expect": "predicted", "verdict": "healthy",
        "passed": False, "worst_over_tolerance": 5.0, "measured_span": [-1.5, 0.0],
        "n_layers": 2, "layers": [{**layer, "ok": False}, {**layer, "layer": "b", "ok": True}],
    }  # fmt: skip
    line = row(result)
    assert "**no**" in line and "1/2" in line and "0.50" in line and "-1.00" in line
