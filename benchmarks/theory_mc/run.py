"""Predicted against measured, per layer: the tolerance and the verdict of the check.

For each configuration ``gw.theory.predict(model, inputs=batch)`` runs on the model of the
first seed; each layer's predicted log10 attenuation must be within max(0.1, 0.05·|log10
measured|) of the Monte Carlo geometric mean (0.1 decade, or 5% of the log for ratios far
from 1).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

import gradwatch as gw

from .configs import Config
from .montecarlo import measure
from .rnn import measure_time, time_pairs

#: The tolerance: max(ABS, REL·|log10 measured|) decades.
ABS, REL = 0.1, 0.05


def tolerance(measured_log10: float) -> float:
    """Allowed |predicted − measured| in decades."""
    return max(ABS, REL * abs(measured_log10))


def check_config(config: Config, seeds: int | None = None) -> dict[str, Any]:
    """Predict, measure, compare; a JSON-ready dict."""
    start = time.process_time()
    inputs = config.batch()
    torch.manual_seed(1000)
    model = config.build()
    t0 = time.process_time()
    pred = gw.theory.predict(model, inputs=inputs)
    theory_s = time.process_time() - t0
    if config.family == "recurrent":  # through time: one row per layer and step
        mc = measure_time(config, seeds)
        pairs = time_pairs(pred.table, mc)
    else:
        mc = measure(config, seeds)
        att = pred.table.set_index("layer")["attenuation"]
        pairs = [
            (name, float(att.get(name, math.nan)), m, sd)
            for name, m, sd in zip(mc["layers"], mc["log10"], mc["sd"], strict=True)
        ]
    rows = []
    for name, a, m, sd in pairs:
        p = math.log10(a) if a > 0 else (-math.inf if a == 0 else math.nan)
        tol = tolerance(m) if math.isfinite(m) else math.nan
        ok = bool(math.isfinite(p) and math.isfinite(m) and abs(p - m) <= tol) or bool(
            p == m == -math.inf
        )
        rows.append(
            {
                "layer": name,
                "predicted": p,
                "measured": float(m),
                "sd": float(sd),
                "tolerance": tol,
                "ok": ok,
            }
        )
    worst = max(
        (
            abs(r["predicted"] - r["measured"]) / r["tolerance"]
            for r in rows
            if math.isfinite(r["predicted"]) and math.isfinite(r["measured"])
        ),
        default=math.nan,
    )
    span = [r["measured"] for r in rows if math.isfinite(r["measured"])]
    return {
        "name": config.name,
        "family": config.family,
        "description": config.description,
        "expect": config.expect,
        "verdict": pred.verdict,
        "reason": pred.reason,
        "seeds": mc["seeds"],
        "layers": rows,
        "n_layers": len(rows),
        "passed": all(r["ok"] for r in rows)
        if config.expect == "predicted"
        else pred.verdict == "uncertain",
        "worst_over_tolerance": worst,
        "measured_span": [float(np.min(span)), float(np.max(span))] if span else [],
        "theory_cpu_s": theory_s,
        "cpu_s": time.process_time() - start,
    }
