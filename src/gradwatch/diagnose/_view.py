"""The small read-only view every diagnosis rule works on, and helpers the rules share.

A rule is a function ``rule(view) -> list[Finding]``. It never sees a Monitor or a model: only
this view over a :class:`~gradwatch.store.reader.Run` (a recorded run, or the one-step run of
a checkup), so the same rules serve ``gw.watch`` and ``gw.check``.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from gradwatch.jsonable import json_number
from gradwatch.store.reader import Run

#: A condition seen in a training run is reported when it holds at the last recorded step
#: (it persists) or at least at this fraction of the recorded steps; a blip at one step of a
#: long run is not worth a finding. A vanishing, dead or saturated condition that has cleared
#: by the last recorded step is reported as a note (severity "info"): the run recovered.
PERSIST_FRACTION = 0.2


LOSS_FELL = 0.75
"""A training run whose loss ends (median of its last fifth) below this fraction of its start
(median of the first three recorded losses) is learning: a condition that has not stopped it
(a vanishing signal whose input side keeps pace, a layer with some dead units) is a note."""


@dataclass
class RunView:
    """What a rule may look at: layer order, wide per-statistic tables, meta.

    Attributes:
        run: the underlying run.
        is_checkup: True for the one-step run of :func:`gradwatch.check`.
    """

    run: Run
    is_checkup: bool = False
    _wide: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def meta(self) -> dict[str, Any]:
        """The run's meta.json content."""
        return self.run.meta

    @property
    def layers(self) -> list[str]:
        """Layer names, input side first."""
        return self.run.layers

    @property
    def checkup(self) -> dict[str, Any]:
        """Extra facts a checkup records in ``meta["checkup"]`` (empty for a training run)."""
        return dict(self.meta.get("checkup") or {})

    def layer_type(self, layer: str) -> str:
        """The module class name of ``layer`` ("" when unknown)."""
        return str((self.meta.get("layer_info") or {}).get(layer, {}).get("type", ""))

    @property
    def families(self) -> set[str]:
        """Activation families present in the model ("sigmoid", "tanh", "rectifier", ...)."""
        acts = self.meta.get("activations") or {}
        return {str(a.get("family")) for a in acts.values() if isinstance(a, dict)}

    @property
    def structure(self) -> dict[str, Any]:
        """``meta["structure"]`` (:func:`gradwatch.structure.describe`), {} when not recorded."""
        return dict(self.meta.get("structure") or {})

    def is_norm(self, layer: str) -> bool:
        """Whether ``layer`` is a normalisation layer (from the recorded structure)."""
        return layer in set(self.structure.get("norm_layers") or ())

    def out_shape(self, layer: str) -> tuple[int, ...] | None:
        """The layer's output shape without the batch dimension (None when not recorded)."""
        shape = (self.meta.get("layer_info") or {}).get(layer, {}).get("out_shape")
        if not isinstance(shape, list | tuple) or not shape:
            return None
        return tuple(int(n) for n in shape[1:])

    @property
    def weight_layers(self) -> list[str]:
        """Layers that are not normalisation layers (the depth the rules speak of)."""
        return [ly for ly in self.layers if not self.is_norm(ly)]

    @property
    def has_norm(self) -> bool:
        """Whether the model has normalisation layers (BatchNorm, LayerNorm, GroupNorm...)."""
        return bool(self.structure.get("norm_layers"))

    @property
    def residual(self) -> bool | None:
        """Whether the model has residual connections (None: not known)."""
        r = self.structure.get("residual")
        return None if r is None else bool(r)

    @property
    def path(self) -> str:
        """The path the back-propagated signal takes across depth (``verdicts.PATHS``).

        "residual" when the model has shortcuts (residual or dense joins) or attention,
        "normalized" when it has normalization layers and no shortcut, "plain" otherwise (a
        run without a recorded structure too).
        """
        st = self.structure
        if st.get("shortcuts") or st.get("residual") or st.get("attention"):
            return "residual"
        return "normalized" if st.get("has_norm") else "plain"

    @property
    def plain_chain(self) -> bool:
        """A chain of layers without normalization, residual connections or attention.

        Only in such a chain does growth of the back-propagated signal toward the input
        predict a failed run (deep BN and residual nets grow at init and train). A run without
        a recorded structure counts as a plain chain.
        """
        st = self.structure
        return not (st.get("has_norm") or st.get("residual") or st.get("attention"))

    def wide(self, stat: str) -> pd.DataFrame:
        """One statistic as a wide table: index step, one column per layer, input side first.

        Like :meth:`Run.pivot`, but NaN and Inf values are kept (``pivot_table`` drops NaN,
        which would hide exactly the values the nonfinite rule looks for). A layer that never
        recorded the statistic has no column; the loss is not included (see :attr:`loss`).
        """
        if stat not in self._wide:
            df = self.run.stats
            df = df[(df["stat"] == stat) & (df["layer"] != "")]
            if df.empty:
                wide = pd.DataFrame(index=pd.Index([], name="step", dtype="int64"))
            else:
                df = df.drop_duplicates(["step", "layer"], keep="last")
                wide = df.pivot(index="step", columns="layer", values="value").sort_index()
                wide = wide[[c for c in self.layers if c in wide.columns]]
            wide.columns.name = None
            self._wide[stat] = wide
        return self._wide[stat]

    @property
    def loss(self) -> pd.Series:
        """The loss per recorded step (NaN and Inf kept)."""
        if "loss" not in self._wide:
            df = self.run.stats
            df = df[(df["stat"] == "loss") & (df["layer"] == "")]
            df = df.drop_duplicates(["step"], keep="last")
            self._wide["loss"] = df.set_index("step")["value"].sort_index()
        return self._wide["loss"]

    @property
    def steps(self) -> list[int]:
        """Every recorded step, in order."""
        return sorted(int(s) for s in self.run.stats["step"].unique())

    def memo(self, key: str, compute: Any) -> Any:
        """Compute a value once per view (rules share e.g. the gradient-flow analysis)."""
        if key not in self._memo:
            self._memo[key] = compute(self)
        return self._memo[key]


def finite_loss(view: RunView) -> tuple[list[int], np.ndarray]:
    """(steps, values) of the recorded losses that are finite, in step order."""
    loss = view.loss
    values = loss.to_numpy(dtype=np.float64)
    ok = np.isfinite(values)
    return [int(s) for s, o in zip(loss.index, ok, strict=True) if o], values[ok]


def loss_fell(view: RunView) -> tuple[float, float] | None:
    """``(start, end)`` of the loss when the run is learning (see :data:`LOSS_FELL`), else None."""
    if view.is_checkup:
        return None
    loss = view.loss.to_numpy(dtype=np.float64)
    loss = loss[np.isfinite(loss)]
    if len(loss) < 5:
        return None
    start = float(np.median(loss[:3]))
    end = float(np.median(loss[-max(1, len(loss) // 5) :]))
    return (start, end) if end < LOSS_FELL * start else None


def persists(held: list[int], recorded: list[int]) -> bool:
    """Whether a condition held at ``held`` steps is worth reporting (see PERSIST_FRACTION)."""
    if not held or not recorded:
        return False
    return held[-1] == recorded[-1] or len(held) >= math.ceil(PERSIST_FRACTION * len(recorded))


def step_span(view: RunView, held: list[int]) -> tuple[int, int] | None:
    """``(first, last)`` step for a training run; None for a checkup."""
    if view.is_checkup or not held:
        return None
    return (int(held[0]), int(held[-1]))


def when(view: RunView, held: list[int], recorded: list[int]) -> str:
    """A short phrase saying when a condition held ("" for a checkup).

    `` at step 3``, `` at steps 0-29, still at the last recorded step``.
    """
    if view.is_checkup or not held:
        return ""
    first, last = held[0], held[-1]
    span = f" at step {first}" if first == last else f" at steps {first}-{last}"
    still = ", still at the last recorded step" if held[-1] == recorded[-1] else ""
    return span + still


def names(layers: list[str], limit: int = 4) -> str:
    """``'a', 'b', 'c' and 2 more``; never "and 1 more": one name more is written out."""
    more = len(layers) - limit
    if more == 1:
        limit, more = limit + 1, 0
    quoted = [f"'{x}'" for x in layers[:limit]]
    if more > 0:
        return ", ".join(quoted) + f" and {more} more"
    if len(quoted) <= 1:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


def num(x: Any) -> Any:
    """A JSON-clean number: Python int/bool, or a float rounded to 6 significant digits.

    Non-finite floats follow :mod:`gradwatch.jsonable`: "nan", "inf", "-inf".
    """
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    return json_number(float(f"{float(x):.6g}"))


def layers_over(
    view: RunView, stat: str, threshold: float, exclude: Collection[str] = ()
) -> tuple[dict[str, float], np.ndarray, list[int], list[int]] | None:
    """Layers whose ``stat`` (a fraction) exceeds ``threshold``, if that persists.

    Layers in ``exclude`` are not looked at.

    Returns:
        ({layer: value} over the threshold at the last step where any layer was, that step's
        row of values (all layers), the steps where any layer was over, all recorded steps),
        or None when the statistic is not recorded or the condition does not persist.
    """
    wide = view.wide(stat)
    if exclude:
        wide = wide.drop(columns=[c for c in wide.columns if c in set(exclude)])
    if wide.empty or not len(wide.columns):
        return None
    arr = np.nan_to_num(wide.to_numpy(dtype=np.float64), nan=0.0)
    steps = [int(s) for s in wide.index]
    hot = (arr > threshold).any(axis=1)
    held = [s for s, h in zip(steps, hot, strict=True) if h]
    if not persists(held, steps):
        return None
    row = arr[steps.index(held[-1])]
    over = {str(c): float(v) for c, v in zip(wide.columns, row, strict=True) if v > threshold}
    return over, row, held, steps
