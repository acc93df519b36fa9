"""One definition of each verdict, shared by ``theory.predict``, ``check``, ``diagnose``, ``fix``.

A verdict is one word for a model or a run:

============ ===================================================================================
healthy      nothing found that predicts a failed or a crippled training run
vanishing    the back-propagated signal shrinks geometrically toward the input (or back through
             time), so the input-side layers (or early time steps) barely learn
exploding    what predicts a failed run: the signal grows geometrically across depth (judged
             on every path, :func:`depth_verdict`), updates swamp the weights, the gradient
             norm blows up over the steps, or the loss diverges
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

KIND_VERDICT = {
    "diverging": "exploding",
    "underflow": "vanishing",
    "overflow": "exploding",
    "loss_spike": "exploding",
    "attention_logit_growth": "exploding",
    "output_logit_divergence": "exploding",
    "grad_spike": "exploding",
}
"""Finding kinds that are not verdicts themselves, and the verdict they count toward: a loss
that climbs by orders of magnitude, or spikes, is the failed run that exploding gradients
predict; a gradient that flushes to zero in the training's low-precision format is the
vanishing gradient of that format, one that overflows it the exploding one; attention logits
or output logits that grow without bound, or a spiking gradient norm, are what comes before
a spike in a transformer. (``adam_epsilon`` counts toward none: it slows training, it does
not break it.)"""

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
"""``r`` above this is exploding: through a plain chain of layers (no normalization, no
shortcut) an error, the mirror image of :data:`VANISHING_RATIO`; through a chain of
normalised layers without shortcuts a warning (batch norm without skips explodes the gradient
geometrically with depth, Yang et al. 2019, "A Mean Field Theory of Batch Normalization");
along a residual stream an error when the forward signal explodes with it
(:data:`LOSS_OVER_CHANCE`, :data:`FORWARD_GAIN`)."""

EXPLODING_RATIO_WITH_FACTOR = 10.0
"""``r`` above this with a steady per-layer growth (:data:`EXPLODING_FACTOR`) through a plain
chain is exploding (warning): tanh at σw² = 4 (χ1 ≈ 1.36) grows ~15× over 20 layers."""

EXPLODING_FACTOR = 1.1
"""A fitted per-layer growth above this is geometric (χ1 = 1.21 gives 1.1 per layer)."""

LOSS_OVER_CHANCE = 10.0
"""A cross-entropy at initialisation this many times the loss of a uniform guess (ln of the
number of classes) says the output scale has exploded: logits of standard deviation s give
about 0.67·s·ln 10 for 10 classes, so 10× chance is s ≈ 15 (a healthy init gives s ≲ 1 and
a loss within 1.6× chance on every architecture of the development zoo)."""

FORWARD_GAIN = 1e3
"""The output's root mean square over the input's (the forward signal's gain end to end)
above this is a forward signal that explodes with depth: a residual net without
normalisation adds each block's variance to the stream (Zhang et al. 2019, "Fixup
initialization", §2: the output variance grows exponentially with depth)."""

#: Paths the back-propagated signal takes, for :func:`depth_verdict`.
PATHS = ("plain", "normalized", "residual")

# ------------------------------------------------------------------ over a training run
EXPLODING_GROWTH = 1e3
"""The total gradient norm rising to this multiple of its early value (median of the first
three recorded steps) is an explosion in time (Pascanu et al. 2013)."""

GRAD_NORM_HUGE = 1e6
"""A total gradient norm above this is exploding whatever its history (a loss of order 1
gives nothing like it in a healthy network; a GradScaler's scale is divided out)."""

UPDATE_SWAMP = 1.0
"""An update ``‖Δw‖/‖w_before‖`` (over the weights it was applied to) at or above this replaces
the weights at each step: nothing learned survives the next step (healthy runs stay near 1e-3,
Karpathy's rule of thumb). The recorded ``update_ratio`` divides by the weights after the
step; the exploding rule converts it (``gradwatch.diagnose.exploding.before_step``)."""

DIVERGING_LOSS = 10.0
"""A loss that ends this many times above its best value, and above its start, diverged."""

# ---------------------------------------------------------------------- through time
TEMPORAL_MIN_STEPS = 5
"""Sequences shorter than this say little about long-range gradient flow: not judged."""

TEMPORAL_VANISHING_ERROR = 1e-4
"""``‖∂L/∂x_first‖ / ‖∂L/∂x_last‖`` below this (0 included: an underflow is vanished, not
missing): no dependency that long can be learned (Bengio et al. 1994)."""

TEMPORAL_VANISHING_WARNING = 1e-2
"""...below this: long-range dependencies learn slowly (warning)."""

TEMPORAL_EXPLODING = 1e3
"""...above this: the gradient grows back through time; expect spikes and NaN."""

TEMPORAL_GATED_VANISHED = 1e-12
"""A *gated* carry (LSTM, GRU) whose first step gets less than this of the last step's
gradient at initialisation is vanished, as an ungated one is below
:data:`TEMPORAL_VANISHING_ERROR`; above it a gated carry that fades is learnt open in
training, so a checkup reports it as a note. Measured on the adding problem (T steps, read at
the last): one-layer LSTMs and GRUs over 50 steps at their default init (1.3e-11 to 4e-11;
5e-5 with forget bias 1) train, while 4-layer GRUs (0: underflow) and 4-layer LSTMs with
forget bias 1 (2e-18 to 3e-14 at widths 8 to 128) over 300 steps stay at chance for 400
Adam steps. For the far steps' share to reach float32's resolution (2^-23 ≈ 1.2e-7) next to
the last one's, the gate must carry the signal 10^5 times better than at this floor."""

TEMPORAL_REACH = 0.5
"""A model with no recurrence (no nn.RNN/LSTM/GRU, no weight read at every step) whose
gradient reaches at least this share of the time steps at a usable level (at least
:data:`TEMPORAL_VANISHING_ERROR` of the largest step's ‖∂L/∂x_t‖) is not vanishing through
time, however little its first step gets, unless a per-step factor compounds
(:data:`TEMPORAL_COMPOUNDING_FIT`). Without recurrence the gradient at step t is a sum over
the paths from x_t to the loss, uneven over t by construction: a WaveNet's dilated causal
convolutions give lag k one path whose gain falls with the number of dilations it crosses
(1e-7 of the last step's at t = 0, yet 66% of 256 steps above 1e-4 of the largest, and it
trains), whereas a decaying linear recurrence computed without a loop (a diagonal state
space with |λ| ≤ 0.7, an LRU's FFT convolution with |λ| ≤ 0.65) reaches 4-7% of the steps."""

TEMPORAL_COMPOUNDING_FIT = 0.8
"""A per-step factor compounds when a straight line fitted to ``ln ‖∂L/∂x_t‖`` over the
steps before the last explains at least this share of its variance (R²): a recurrence's
product of Jacobians gives 0.97-1.0 (tanh RNNs, LSTMs, GRUs, diagonal state spaces), the
path counts of a temporal convolution 0.36-0.38 (a WaveNet, a TCN)."""


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


def depth_verdict(
    ratio: float,
    factor: float,
    plain_chain: bool = True,
    *,
    path: str | None = None,
    forward_exploding: bool = False,
) -> tuple[str, str] | None:
    """Judge a norm ratio ``r`` across depth; the one rule theory, checkups and runs share.

    No architecture is exempt from the exploding rule; what differs is what growth of the
    back-propagated signal means on the path it takes (``path``):

    - "plain" (a chain of layers, no normalization, no shortcut): growth is the chaotic
      phase of mean-field theory (Schoenholz et al. 2017): past :data:`EXPLODING_RATIO` an
      error, past :data:`EXPLODING_RATIO_WITH_FACTOR` with a steady per-layer growth a
      warning;
    - "normalized" (normalization layers, no shortcut): batch norm explodes the gradient
      geometrically with depth (Yang et al. 2019); past :data:`EXPLODING_RATIO` a warning
      (such nets train with care, e.g. a plain-34 with BN, He et al. 2016, grows ~140×);
    - "residual" (shortcuts or attention): each block adds its branch's gradient to the
      identity's, and deep BN ResNets grow past 10³ at initialisation and train (ResNet-152:
      ~4×10³, He et al. 2016), so growth past :data:`EXPLODING_RATIO` is an error only when
      the forward signal explodes with it (``forward_exploding``: a loss far above chance or
      an output far above the input, Zhang et al. 2019).

    Where the forward signal explodes, no path holds the stream at its scale, so growth is
    judged on every path as through a plain chain, and as an error: past
    :data:`EXPLODING_RATIO`, or past :data:`EXPLODING_RATIO_WITH_FACTOR` with a steady
    per-layer growth (a 38-layer ResNet without normalisation, He init: ×2e2 at 1.39 per
    block, the loss 225× chance, NaN at the first SGD step).

    Args:
        ratio: ``‖δ_input side‖ / ‖δ_output side‖``.
        factor: the per-layer factor (``r^(1/L)``, or a fitted one).
        plain_chain: the path when ``path`` is not given: True is "plain", False "residual".
        path: one of :data:`PATHS`.
        forward_exploding: whether the forward signal explodes (see above).

    Returns:
        ``(verdict, severity)`` or None when healthy.
    """
    if ratio < VANISHING_RATIO:
        return "vanishing", "error"
    if factor < VANISHING_FACTOR and ratio < VANISHING_RATIO_WITH_FACTOR:
        return "vanishing", "warning"
    path = path or ("plain" if plain_chain else "residual")
    if path == "plain":
        if ratio > EXPLODING_RATIO:
            return "exploding", "error"
        if factor > EXPLODING_FACTOR and ratio > EXPLODING_RATIO_WITH_FACTOR:
            return "exploding", "warning"
    elif forward_exploding and (
        ratio > EXPLODING_RATIO
        or (factor > EXPLODING_FACTOR and ratio > EXPLODING_RATIO_WITH_FACTOR)
    ):
        # the forward signal explodes with the backward one: nothing keeps the stream at
        # its scale, so its growth is judged as through a plain chain (Zhang et al. 2019)
        return "exploding", "error"
    elif path == "normalized" and ratio > EXPLODING_RATIO:
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
