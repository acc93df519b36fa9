"""Measuring a held-out case for its truth: at initialisation, over training, after training.

:func:`measure_entry` is what ``benchmarks/zoo_heldout_truth.py`` runs per case (in a worker
process); it returns a JSON-ready dict. :func:`drift` compares the figures a case recorded
when its truth was written (``Case.measured``) with a fresh measurement; :func:`render` writes
the Markdown table.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import torch

from .common import Entry
from .measure import build_at_init, measure, move_summary, summarise, train_plain


def _curve(values: list[float], points: int = 12) -> list[float]:
    """``points`` evenly spaced values of a curve (first and last included)."""
    if len(values) <= points:
        return list(values)
    idx = np.linspace(0, len(values) - 1, points).round().astype(int)
    return [values[i] for i in idx]


def measure_entry(entry: Entry) -> dict[str, Any]:
    """Every figure of one case: ``init`` and ``after`` (:func:`summarise` of a float64 pass on
    the check batch, on the fresh and on the trained model) and ``train``."""
    case, probe = entry.case, entry.probe
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    model, inputs, targets = build_at_init(case)
    init = measure(model, inputs, targets, case.loss, probe)
    trained, run = train_plain(case)
    _, inputs, targets = build_at_init(case)
    try:
        after = measure(trained, inputs, targets, case.train.loss or case.loss, probe)
        after_sum = summarise(after, probe.chance)
    except Exception as exc:  # noqa: BLE001 - e.g. NaN weights: reported, not fatal
        after, after_sum = None, {"error": f"{type(exc).__name__}: {exc}"[:300]}
    losses = run.pop("losses")
    gn = run.pop("grad_norms")
    ups = [u for u in run.pop("update_ratios") if math.isfinite(u)]
    finite_gn = [g for g in gn if math.isfinite(g)]
    train = {k: v for k, v in run.items() if k != "move"}
    train.update(move_summary(run["move"]))
    train.update({
        "loss_curve": _curve(losses), "grad_norm_curve": _curve(gn),
        "grad_norm_growth": (max(finite_gn) / finite_gn[0]
                             if finite_gn and finite_gn[0] > 0 else float("nan")),
        "update_ratio_median": float(np.median(ups)) if ups else float("nan"),
        "update_ratio_max": max(ups) if ups else float("nan"),
    })
    return {
        "name": case.name, "family": case.family, "truth_init": case.expect_init,
        "truth_run": case.expect_run, "stated_outcome": case.train.outcome,
        "source": case.source, "why": case.why,
        "init": summarise(init, probe.chance), "train": train, "after": after_sum,
        "trunk_init": init["trunk"], "trunk_after": after["trunk"] if after else None,
        "time_grad_init": _curve(init["time_grad"] or [], 16),
        "time_grad_after": _curve((after or {}).get("time_grad") or [], 16),
        "recorded": dict(case.measured), "wall_s": time.perf_counter() - t0,
    }


#: The figures a case records when its truth is written (``Case.measured``), where defined.
RECORDED_KEYS = (
    "init.loss_over_chance", "init.trunk_ratio", "init.trunk_factor", "init.fwd_growth",
    "init.time_ratio", "init.time_reach", "init.gw_ratio_max", "init.dead_max",
    "init.saturated_max",
    "train.loss_start", "train.loss_end", "train.nan_step", "train.move_first",
    "train.update_ratio_max", "after.trunk_ratio", "after.time_ratio", "after.dead_max",
    "after.saturated_max",
)


def recorded(row: dict[str, Any]) -> dict[str, float]:
    """The :data:`RECORDED_KEYS` of a measured row that are finite, to 3 significant digits."""
    out = {}
    for key in RECORDED_KEYS:
        v = lookup(row, key)
        if v is not None and math.isfinite(v):
            out[key] = float(f"{v:.3g}")
    return out


def figures_json(rows: list[dict[str, Any]], previous: dict[str, dict[str, float]],
                 order: list[str]) -> str:
    """The text of ``figures.json``: {case: recorded figures}, one case per line, in ``order``.

    The cases of ``rows`` get their freshly measured figures (:func:`recorded`); the other
    cases of ``order`` keep ``previous`` (what they recorded when their truth was written);
    names outside ``order`` (cases that left the set) are dropped.
    """
    fresh = {r["name"]: recorded(r) for r in rows}
    keep = [(n, fresh[n] if n in fresh else previous[n]) for n in order
            if n in fresh or n in previous]
    body = ",\n".join(f" {json.dumps(n)}: {json.dumps(v)}" for n, v in keep)
    return "{\n" + body + "\n}\n"


def lookup(row: dict[str, Any], key: str) -> float | None:
    """A figure of a row by dotted name: ``init.trunk_ratio``, ``train.move_first``, ..."""
    part, _, name = key.partition(".")
    block = row.get(part) or {}
    v = block.get(name)
    return float(v) if isinstance(v, int | float | bool) else None


#: Recorded figures that move past :func:`same`'s tolerance with the CPU's vector width (measured
#: again under ``ATEN_CPU_CAPABILITY=avx2`` against this AVX-512 machine; the outcome and the
#: verdicts do not change): {case: {key: the AVX2 value}}. They are compared within a decade.
WIDTH_DEPENDENT: dict[str, dict[str, float]] = {
    "efficientnet_b0_half": {"after.trunk_ratio": 11.1},
    "layernorm_mlp_32": {"after.trunk_ratio": 1.9},
    "noskip_transformer_8": {"after.trunk_ratio": 1.7e-5},
}


def same(rec: float, now: float | None, *, decades: float | None = None) -> bool:
    """Whether a fresh figure reproduces a recorded one: within half a decade for figures
    below 1e-3 or above 1e3 (gradient ratios), else within 25% or 0.02; within ``decades``
    (on a log scale, same sign) where that is given."""
    if now is None:
        return False
    if not (math.isfinite(rec) and math.isfinite(now)):
        return rec == now or (math.isnan(rec) and math.isnan(now))
    if decades is not None:
        return rec * now > 0 and abs(math.log10(now / rec)) <= decades
    if rec > 0 and now > 0 and (min(rec, now) < 1e-3 or max(rec, now) > 1e3):
        return abs(math.log10(now / rec)) <= 0.5
    return abs(now - rec) <= max(0.25 * max(abs(rec), abs(now)), 0.02)


def drift(row: dict[str, Any]) -> dict[str, tuple[float, float | None]]:
    """Recorded figures (``Case.measured``) a fresh measurement does not reproduce (:func:`same`;
    the :data:`WIDTH_DEPENDENT` ones within a decade): {key: (recorded, now)}."""
    wide = WIDTH_DEPENDENT.get(row.get("name", ""), {})
    return {key: (rec, lookup(row, key)) for key, rec in row["recorded"].items()
            if not same(float(rec), lookup(row, key), decades=1.0 if key in wide else None)}


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-2:
            return f"{v:.1e}"
        return f"{v:.3g}"
    return str(v)


COLUMNS = (
    ("init.loss_over_chance", "loss₀/chance"), ("init.trunk_ratio", "‖δ‖ in/out"),
    ("init.trunk_factor", "per block"), ("init.fwd_growth", "fwd std ×"),
    ("init.time_ratio", "‖∂L/∂x₀‖/‖∂L/∂x_T‖"), ("init.time_reach", "reach (steps)"),
    ("init.gw_ratio_max", "max ‖∇W‖/‖W‖"),
    ("init.dead_max", "dead"), ("init.saturated_max", "saturated"),
    ("train.outcome", "run"), ("train.loss_start", "loss start"), ("train.loss_end", "end"),
    ("train.nan_step", "NaN at"), ("train.move_first", "W₁ moved"),
    ("train.update_ratio_max", "max ‖Δθ‖/‖θ‖ (step)"),
    ("after.trunk_ratio", "after: ‖δ‖ in/out"), ("after.time_ratio", "after: time"),
    ("after.dead_max", "after: dead"), ("after.saturated_max", "after: sat."),
)


def render(rows: list[dict[str, Any]]) -> str:
    """The truth table in Markdown: truth, then the measured figures behind it."""
    head = ["case", "family", "truth init", "truth run"] + [t for _, t in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], r["family"], r["truth_init"], r["truth_run"]]
        for key, _ in COLUMNS:
            part, _, name = key.partition(".")
            cells.append(_fmt((r.get(part) or {}).get(name)))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for r in rows:
        lines += [f"### {r['name']}", "", f"*Truth:* init **{r['truth_init']}**, after "
                  f"training **{r['truth_run']}** (stated outcome: {r['stated_outcome']}).",
                  "", f"*Source:* {r['source']}", ""]
        if r["why"]:
            lines += [f"*Why:* {r['why']}", ""]
    return "\n".join(lines)
