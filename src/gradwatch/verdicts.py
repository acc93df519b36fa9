"""One definition of each verdict, shared by ``theory.predict``, ``check``, ``diagnose``, ``fix``.

A verdict is one word for a model or a run:

============ ===================================================================================
healthy      nothing found that predicts a failed or a crippled training run
vanishing    the back-propagated signal shrinks geometrically toward the input (or back through
             time), so the input-side layers (or early time steps) barely learn
exploding    what predicts a failed run: the signal grows geometrically through a plain chain
             of layers, updates swamp the weights, the gradient norm blows up over the steps,
             or the loss diverges
nonfinite    NaN or Inf in the loss, the weights, a forward output or the gradients
dead         rectifier units (channels, for convolutions) that never fire
saturated    sigmoid/tanh units stuck in their flat tails
uncertain    outside what gradwatch can judge (the reason is in the finding)
============ ===================================================================================

The thresholds are on the **norm** ratio ``r = ‖δ_input side‖ / ‖δ_output side‖`` of the
back-propagated signal δ = ∂L/∂(layer output) (see ``docs/reference/statistics.md`` for
which layers are compared). Mean-field theory predicts ``E‖δ_l‖² ∝ χ1^(L−l)`` (Schoenholz
et al. 2017), so ``r = χ1^(L/2)`` for a uniform chain of L layers: theory, checkups and runs
all compare the same ``r`` with the same numbers below.

:class:`Findings` is the list of findings a diagnosis returns, which prints as its verdict
and one paragraph per finding.

This module sits at the bottom of the package (it imports nothing from gradwatch but the
Finding), so every layer above it can share it.
"""

from __future__ import annotations

from collections.abc import Iterable

from gradwatch.findings import SEVERITY_RANK, Finding

VERDICTS = (
    "healthy",
    "vanishing",
    "exploding",
    "nonfinite",
    "dead",
    "saturated",
    "uncertain",
)
"""Every verdict, the fixed vocabulary of DESIGN.md plus "uncertain"."""

VERDICT_PRECEDENCE = ("nonfinite", "exploding", "vanishing", "dead", "saturated", "uncertain")
"""Verdict kinds, most severe first: the verdict is the first of these among the findings of
severity "warning" or "error" ("healthy" when there is none)."""

KIND_VERDICT = {"diverging": "exploding"}
"""Finding kinds that are not verdicts themselves, and the verdict they count toward: a loss
that climbs by orders of magnitude is the failed run that exploding gradients predict."""

# -------------------------------------------------------------- gradient flow across depth
VANISHING_RATIO = 1e-3
"""``r`` below this is vanishing (error): the input-side layers get a thousandth of the top
layers' signal, He et al.'s (2015) "completely stalls" regime (30 ReLU layers under Xavier
init lose 2^-15 ≈ 3×10^-5)."""

VANISHING_RATIO_WITH_FACTOR = 1e-2
"""``r`` below this, with a steady per-layer decay (:data:`VANISHING_FACTOR`), is vanishing
(warning): Glorot & Bengio's (2010) standard init loses ~√(1/3) per layer."""

VANISHING_FACTOR = 0.85
"""A fitted per-layer factor below this is a geometric decay; a critical network stays near 1
(ReLU + Xavier: 1/√2 ≈ 0.71 per layer, He et al. 2015)."""

EXPLODING_RATIO = 1e3
"""``r`` above this through a plain chain of layers (no residual connection, no
normalization) is exploding (error): the mirror image of :data:`VANISHING_RATIO`."""

EXPLODING_RATIO_WITH_FACTOR = 10.0
"""``r`` above this with a steady per-layer growth (:data:`EXPLODING_FACTOR`) through a plain
chain is exploding (warning): tanh at σw² = 4 (χ1 ≈ 1.36) grows ~15× over 20 layers."""

EXPLODING_FACTOR = 1.1
"""A fitted per-layer growth above this is geometric (χ1 = 1.21 gives 1.1 per layer)."""

# ------------------------------------------------------------------ over a training run
EXPLODING_GROWTH = 1e3
"""The total gradient norm rising to this multiple of its early value (median of the first
three recorded steps) is an explosion in time (Pascanu et al. 2013)."""

GRAD_NORM_HUGE = 1e6
"""A total gradient norm above this is exploding whatever its history (a loss of order 1
gives nothing like it in a healthy network; a GradScaler's scale is divided out)."""

UPDATE_SWAMP = 1.0
"""An update ``‖Δw‖/‖w‖`` at or above this replaces the weights at each step: nothing learned
survives the next step (healthy runs stay near 1e-3, Karpathy's rule of thumb)."""

DIVERGING_LOSS = 10.0
"""A loss that ends this many times above its best value, and above its start, diverged."""

# ---------------------------------------------------------------------- through time
TEMPORAL_VANISHING_ERROR = 1e-4
"""``‖∂L/∂x_first‖ / ‖∂L/∂x_last‖`` below this (0 included: an underflow is vanished, not
missing): no dependency that long can be learned (Bengio et al. 1994)."""

TEMPORAL_VANISHING_WARNING = 1e-2
"""...below this: long-range dependencies learn slowly (warning)."""

TEMPORAL_EXPLODING = 1e3
"""...above this: the gradient grows back through time; expect spikes and NaN."""


def verdict_of_kind(kind: str) -> str | None:
    """The verdict a finding kind counts toward (None for notes such as "stalled")."""
    kind = KIND_VERDICT.get(kind, kind)
    return kind if kind in VERDICT_PRECEDENCE else None


def verdict(findings: Iterable[Finding]) -> str:
    """Return "healthy" or the most severe verdict among warning/error findings.

    Args:
        findings: findings of the rules (any iterable of :class:`Finding`).

    Returns:
        one of :data:`VERDICTS`.
    """
    kinds = set()
    for f in findings:
        if SEVERITY_RANK.get(f.severity, 0) >= 1:
            v = verdict_of_kind(f.kind)
            if v is not None:
                kinds.add(v)
    for kind in VERDICT_PRECEDENCE:
        if kind in kinds:
            return kind
    return "healthy"


def depth_verdict(ratio: float, factor: float, plain_chain: bool = True) -> tuple[str, str] | None:
    """Judge a norm ratio ``r`` across depth; the one rule theory, checkups and runs share.

    Args:
        ratio: ``‖δ_input side‖ / ‖δ_output side‖``.
        factor: the per-layer factor (``r^(1/L)``, or a fitted one).
        plain_chain: False when the model has residual connections or normalization layers;
            growth across depth then predicts nothing (deep BN and residual nets grow at
            init by construction, Yang et al. 2019, and train), so only vanishing is judged.

    Returns:
        ``(verdict, severity)`` or None when healthy.
    """
    if ratio < VANISHING_RATIO:
        return "vanishing", "error"
    if factor < VANISHING_FACTOR and ratio < VANISHING_RATIO_WITH_FACTOR:
        return "vanishing", "warning"
    if not plain_chain:
        return None
    if ratio > EXPLODING_RATIO:
        return "exploding", "error"
    if factor > EXPLODING_FACTOR and ratio > EXPLODING_RATIO_WITH_FACTOR:
        return "exploding", "warning"
    return None


class Findings(list):
    """The findings of a diagnosis: a ``list`` of :class:`Finding` that prints readably.

    ``print(gw.diagnose(run))`` prints the verdict and one paragraph per finding (what, where,
    the message, what to try); ``repr`` gives one short line per finding. Everything else is
    the list's: indexing, ``len``, ``==`` with a plain list, ``json.dumps``, pickling.
    """

    def __init__(self, items: Iterable[Finding] = ()) -> None:
        super().__init__(items)

    @property
    def verdict(self) -> str:
        """The verdict these findings imply (:func:`verdict`)."""
        return verdict(self)

    def __str__(self) -> str:
        """``verdict: vanishing (2 findings)`` then each finding as ``str(finding)``."""
        if not self:
            return f"verdict: {self.verdict} (no findings)"
        count = f"{len(self)} finding{'s' if len(self) > 1 else ''}"
        return "\n".join([f"verdict: {self.verdict} ({count})", *(str(f) for f in self)])

    def __repr__(self) -> str:
        """``Findings([Finding(...), ...])``, one finding per line."""
        if not self:
            return "Findings([])"
        return "Findings([\n" + "".join(f"    {f!r},\n" for f in self) + "])"
