"""The report :func:`gradwatch.fix` returns: checkups before and after, and what was done."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from torch import nn

from gradwatch.jsonable import json_cell, jsonable

if TYPE_CHECKING:
    from gradwatch.check import Checkup

#: Columns of :meth:`FixReport.table`, in order.
TABLE_COLUMNS = (
    "layer",
    "layer_before",
    "type",
    "backprop_norm_before",
    "backprop_norm_after",
    "backprop_change",
    "grad_norm_before",
    "grad_norm_after",
)


def architecture_signature(model: nn.Module) -> tuple[Any, ...]:
    """(module names and types, parameter names and shapes): equal iff the architecture is."""
    modules = tuple((name, type(m).__name__) for name, m in model.named_modules())
    params = tuple((name, tuple(p.shape)) for name, p in model.named_parameters())
    return modules, params


@dataclass(repr=False)
class FixReport:
    """What :func:`gradwatch.fix` measured and changed.

    Attributes:
        before: the checkup of the model as given.
        after: the checkup of the returned model.
        applied: (remedy name, details) of each remedy applied, in order; the details hold
            its settings, "kind", and the "verdict" and "backprop_spread" measured after it.
        changed_architecture: whether modules or parameter shapes differ from the model's
            (False when only weights changed); load the saved weights into the new
            architecture (``new_architecture``) when True.
        recommendations: advice for the training loop (gradient clipping) or for what the
            allowed remedies could not fix; never applied.
        tried: every candidate evaluated: remedy, settings, verdict, backprop_spread,
            accepted, or "skipped" with the reason it did not apply.
        allow: the kinds of change that were allowed.
        new_architecture: ``repr`` of the returned model.
        trials: with ``fix(..., trial=...)``: what the training trials measured (the model
            as it was, each remedy tried, which were applied or recommended); else None.
    """

    before: Checkup
    after: Checkup
    applied: list[tuple[str, dict[str, Any]]]
    changed_architecture: bool
    recommendations: list[str] = field(default_factory=list)
    tried: list[dict[str, Any]] = field(default_factory=list)
    allow: tuple[str, ...] = ()
    new_architecture: str = ""
    trials: dict[str, Any] | None = None

    @property
    def verdict_before(self) -> str:
        """The verdict of the model as given."""
        return self.before.verdict

    @property
    def verdict_after(self) -> str:
        """The verdict of the returned model."""
        return self.after.verdict

    @property
    def healthy(self) -> bool:
        """Whether the returned model's checkup is healthy."""
        return self.after.verdict == "healthy"

    def table(self) -> pd.DataFrame:
        """Per-layer ``backprop_norm`` and ``grad_norm`` before and after, input side first.

        One row per layer of the returned model, then rows for layers only the original had.
        Layers are matched by type and order (the k-th Linear before is the k-th Linear
        after), so a layer renamed by a restructuring remedy (``"2"`` → ``"2.branch.0"``)
        stays on one row; ``layer_before`` is its name in the original model, empty for an
        inserted layer. ``backprop_change`` = after / before.
        """
        before = _rows(self.before.table)
        after = _rows(self.after.table)
        rows = []
        for key, a in after.items():
            b = before.pop(key, {})
            rows.append(_row(a.get("layer"), b.get("layer"), key[0], b, a))
        for key, b in before.items():
            rows.append(_row(None, b.get("layer"), key[0], b, {}))
        return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))

    def summary(self) -> str:
        """A few lines of plain text: verdicts, remedies applied, recommendations."""
        n = len(self.applied)
        head = f"gradwatch fix: {self.verdict_before} -> {self.verdict_after}"
        if n == 0:
            head += (
                " (already healthy, nothing changed)"
                if self.verdict_before == "healthy"
                else " (no allowed remedy helped; the model is unchanged)"
            )
        else:
            arch = "architecture changed" if self.changed_architecture else "same architecture"
            head += f" ({n} remed{'y' if n == 1 else 'ies'} applied, {arch})"
        lines = [head]
        for f in self.before.findings:
            lines.append(f"  found: [{f.kind}] {f.message}")
        for i, (name, details) in enumerate(self.applied, 1):
            lines.append(f"  {i}. {name}: {describe(details)}")
        not_allowed = [
            k for k in ("init", "activation", "normalization", "residual") if k not in self.allow
        ]
        if n and self.verdict_after != "healthy" and not_allowed:
            lines.append(f"  not allowed: {', '.join(not_allowed)}")
        if self.trials is not None:
            b = self.trials["baseline"]
            n = len(b.get("trials", []))
            lines.append(
                f"  trained in trials: {b['unstable_trials']}/{n} unstable as given, median "
                f"final loss {b['median_final_loss']:.3g} ({self.trials['elapsed_s']:g} s)"
            )
        for rec in self.recommendations:
            lines.append(f"  recommended: {rec}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict, numbers as :mod:`gradwatch.jsonable` writes them.

        NaN and ±inf are "nan", "inf" and "-inf"; in ``layers`` a NaN cell (a layer one of the
        two models lacks, a statistic that does not apply, a change that cannot be computed)
        is None.
        """
        layers = [
            {k: json_cell(float(v)) if isinstance(v, float | np.floating) else v
             for k, v in rec.items()}
            for rec in self.table().to_dict(orient="records")
        ]
        return jsonable(
            {
                "verdict_before": self.verdict_before,
                "verdict_after": self.verdict_after,
                "changed_architecture": self.changed_architecture,
                "allow": list(self.allow),
                "applied": [{"remedy": name, **details} for name, details in self.applied],
                "recommendations": list(self.recommendations),
                "tried": self.tried,
                "findings_before": [f.to_dict() for f in self.before.findings],
                "findings_after": [f.to_dict() for f in self.after.findings],
                "loss_before": getattr(self.before, "loss", None),
                "loss_after": getattr(self.after, "loss", None),
                "layers": layers,
                "new_architecture": self.new_architecture if self.changed_architecture else None,
                "trials": self.trials,
            }
        )

    def __repr__(self) -> str:
        return f"FixReport(\n{self.summary()}\n)"

    def __str__(self) -> str:
        return self.summary()


def recommendations(before: Checkup, after: Checkup) -> list[str]:
    """Advice that fix cannot apply: clipping for exploding gradients, what else to allow."""
    out: list[str] = []
    wants_clip = before.verdict in ("exploding", "nonfinite") or after.verdict in (
        "exploding",
        "nonfinite",
    )
    wants_clip = wants_clip or any(
        "clip" in r.lower() for f in [*before.findings, *after.findings] for r in f.remedies
    )
    if wants_clip:
        out.append(_clip_advice(after))
    if after.verdict in ("vanishing", "dead", "saturated"):
        out.append(
            f"still {after.verdict} after the allowed remedies: allow more kinds of change "
            '(e.g. allow=("init", "activation", "normalization", "residual")) or change the '
            "architecture by hand (see the findings)"
        )
    return out


def _clip_advice(after: Checkup) -> str:
    norms = np.asarray(after.table.get("grad_norm", []), dtype=np.float64)
    norms = norms[np.isfinite(norms)]
    total = float(np.sqrt((norms**2).sum())) if len(norms) else math.nan
    threshold = (
        f"max_norm of about {total:.3g} (the global gradient norm on this batch; Pascanu et "
        "al. suggest 0.5 to 10 times the average norm seen in training)"
        if math.isfinite(total) and total > 0
        else "max_norm between 0.5 and 10 times the average gradient norm seen in training"
    )
    return (
        "clip gradients by norm in the training loop (a training-loop remedy, not applied "
        f"here): gw.remedies.clip_on_step(optimizer, max_norm=...), with {threshold}"
    )


def describe(details: dict[str, Any]) -> str:
    """One phrase for an applied or tried remedy's details."""
    kind = details.get("kind")
    if kind == "init":
        gain = details.get("gain")
        text = f"{details.get('scheme')} init"
        if isinstance(gain, float):
            text += f" (gain {gain:g})"
        elif gain == "activation":
            text += " (gain of each following activation)"
    elif kind == "activation":
        swaps = ", ".join(f"{old} -> {new}" for old, new in details.get("swaps", {}).items())
        text = f"activation {swaps}, He re-init of the layers feeding them"
    elif kind == "normalization" and details.get("norm") == "qk-layernorm":
        text = "qk-layernorm in every nn.MultiheadAttention (verified in training trials)"
    elif kind == "normalization":
        text = f"{details.get('norm')} norm after each hidden Linear/Conv"
    elif kind == "residual":
        text = f"residual shortcuts around blocks of {details.get('block_size')} entries"
    else:
        text = str(kind)
    if "verdict" in details:
        spread = _fmt(details.get("backprop_spread"))
        text += f" -> {details['verdict']} (backprop_norm spread {spread} decades)"
    return text


def _fmt(x: Any) -> str:
    return f"{x:.2g}" if isinstance(x, float) else str(x)


def _rows(table: pd.DataFrame) -> dict[tuple[str, int], dict[str, Any]]:
    """Checkup table rows keyed by (type, occurrence of that type), input side first."""
    seen: defaultdict[str, int] = defaultdict(int)
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for rec in table.to_dict(orient="records"):
        typ = str(rec.get("type", ""))
        out[(typ, seen[typ])] = rec
        seen[typ] += 1
    return out


def _row(layer: Any, layer_before: Any, typ: str, b: dict[str, Any], a: dict[str, Any]) -> dict:
    bp_b, bp_a = _float(b.get("backprop_norm")), _float(a.get("backprop_norm"))
    return {
        "layer": layer,
        "layer_before": layer_before,
        "type": typ,
        "backprop_norm_before": bp_b,
        "backprop_norm_after": bp_a,
        "backprop_change": bp_a / bp_b if bp_b and math.isfinite(bp_b) else math.nan,
        "grad_norm_before": _float(b.get("grad_norm")),
        "grad_norm_after": _float(a.get("grad_norm")),
    }


def _float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan
