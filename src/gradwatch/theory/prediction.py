"""The result of :func:`gradwatch.theory.predict`: a per-layer table, a phase and a verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from gradwatch.verdicts import TEMPORAL_GATED_VANISHED
from gradwatch.wording import number


@dataclass(frozen=True)
class Prediction:
    """What mean-field theory predicts for a model at its current weights.

    Attributes:
        table: one row per layer, input side first: layer, type, activation, fan_in,
            sigma_w2, sigma_b2, q (mean square of the layer's output per feature for
            a traced model; of the pre-activation for a plain chain), chi1 (σw² ∫Dz φ'(√q z)²
            of the layer's own activation; NaN outside a plain chain), attenuation
            (predicted ‖δ_layer‖² / ‖δ_last‖², δ = ∂L/∂output, the last layer being the
            output-side one that receives a gradient); a traced model's table adds
            weight_grad2, the predicted ‖∂L/∂W‖² of a weight matrix and its bias (NaN for
            other layers), for a read-out gradient of unit variance per output element.
        phase: "ordered", "chaotic" or "critical", from the geometric mean per-layer factor.
        gradient_ratio: the predicted squared norm ratio the verdict judges: for a plain
            chain ‖δ_first‖² / ‖δ_last‖² (the first row's attenuation); for a traced model
            the same ratio along the trunk (layers outside residual branches, compared only
            across layers whose outputs have the same shape, as ``gw.check`` compares them).
        trainable_depth: 6 ξ_c for the typical hidden layer of a plain chain (median σw²,
            σb²; the most common activation); NaN for a traced model.
        verdict: "vanishing", "exploding" or "healthy" from ``gradient_ratio`` (the
            thresholds of :mod:`gradwatch.verdicts`), "nonfinite" for NaN/Inf weights, or
            "uncertain" for a model outside the theory (see ``reason``).
        depth: the number of layers.
        reason: why the verdict is "uncertain" or "nonfinite" ("" otherwise).
        method: "chain" (the closed-form recursion of a plain chain of layers, read from
            the modules), "graph" (mean-field rules applied to the operations of one
            recorded forward pass: residual connections, normalisation, attention) or
            "time" (a vanilla nn.RNN through time, :mod:`gradwatch.theory.recurrent`: one
            row per layer ``rnn_layer`` and step ``t``, attenuation ‖∂L/∂x_t‖² at that
            layer's input over its last step's; gradient_ratio the first step's share at
            the module's input; depth the number of steps; trainable_depth the steps over
            which ‖∂L/∂x_t‖² falls by e at the fixed point, −1/ln χ*).

    """

    table: pd.DataFrame
    phase: str
    gradient_ratio: float
    trainable_depth: float
    verdict: str
    depth: int
    reason: str = ""
    method: str = "chain"

    @property
    def norm_ratio(self) -> float:
        """Predicted ‖δ_first‖ / ‖δ_last‖: the number the verdict judges."""
        return math.sqrt(self.gradient_ratio) if self.gradient_ratio >= 0 else math.nan

    def summary(self) -> str:
        """Return one plain sentence with the verdict and the numbers behind it."""
        if self.reason:
            return f"{self.verdict}: {self.reason}"
        text = (
            f"{self.verdict}: {self.depth} layers in the {self.phase} phase; the "
            f"back-propagated gradient's norm is predicted to change by a factor "
            f"{number(self.norm_ratio)} from the last layer to the first"
        )
        if self.method == "time":
            text = (
                f"{self.verdict}: over {self.depth} time steps in the {self.phase} phase; the "
                f"gradient through time is predicted to change by a factor "
                f"{number(self.norm_ratio)} from the last step to the first (at the input of "
                "the recurrent layer)"
            )
            if "type" in self.table and set(self.table["type"]) & {"LSTM", "GRU"}:
                text += (
                    "; a gated carry that fades at initialisation is learnt open in training, "
                    f"and counts as vanished below a factor {number(TEMPORAL_GATED_VANISHED)}"
                )
            return text
        if self.method == "graph":
            return text + " (along the trunk, through layers of the same output shape)"
        return text + f"; trainable depth about {number(self.trainable_depth)}"

    def to_dict(self) -> dict[str, Any]:
        """Return the prediction as plain Python objects (the table as a list of rows)."""
        return {
            "phase": self.phase,
            "gradient_ratio": self.gradient_ratio,
            "trainable_depth": self.trainable_depth,
            "verdict": self.verdict,
            "reason": self.reason,
            "norm_ratio": self.norm_ratio,
            "depth": self.depth,
            "method": self.method,
            "layers": self.table.to_dict(orient="records"),
        }
