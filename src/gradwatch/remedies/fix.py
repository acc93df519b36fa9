"""``fix``: choose remedies from a checkup's findings, apply them to a copy, verify each one.

The loop, on a deep copy of the model (the user's model is never touched):

1. ``gw.check`` the model; a healthy model is returned (as a copy) with nothing applied.
2. For each kind of change, in the order init → activation → normalization → residual
   (kinds the findings name first, then the other allowed ones): build the candidates of
   that kind, apply each to a copy of the current best model, check it again, and keep the
   best. The kind is *applied* only if its best candidate is measurably better than the
   current model; otherwise it is recorded as tried and nothing changes.
3. Stop as soon as a check says "healthy", after ``max_rounds`` applied remedies, or when
   every allowed kind has been tried. The result is the best model seen.

"Better" compares, in order: the verdict (healthy < vanishing/exploding/dead/saturated <
nonfinite) and the spread of the back-propagated signal across layers,
log10(max backprop_norm / min backprop_norm), which a vanishing or exploding network makes
large (Glorot & Bengio 2010: the signal shrinks geometrically toward the input).

Candidates of each kind, by the activation that follows most Linear/Conv layers:

========== ======================================================================
init       ReLU family: He (gain of each following activation), LSUV.
           tanh/sigmoid/none: Xavier and orthogonal at gain 1 (tanh with σw² = 1,
           σb² = 0 is critical, Schoenholz et al. 2017; the 5/3 gain keeps the forward
           variance but puts a deep tanh net in the chaotic phase), LSUV (Mishkin &
           Matas 2016) as the data-dependent fallback.
activation sigmoid/tanh modules → ReLU, with He re-init of the layers feeding them
           (a dying-ReLU network gets LeakyReLU instead).
norm       BatchNorm (Ioffe & Szegedy 2015), then LayerNorm, after each hidden
           Linear/Conv of an nn.Sequential.
residual   identity shortcuts around runs of same-shape entries of an nn.Sequential
           (He et al. 2016), each branch starting at zero.
========== ======================================================================

Gradient clipping is a change to the training loop, not to the model, so it is never
applied; for exploding or non-finite gradients the report recommends it, with a threshold.

With ``trial=`` (a :class:`~gradwatch.remedies.trials.Trial`: data, optimizer, steps, seeds,
time budget), the model is then trained in short seeded trials, because what breaks
transformers (attention logits that grow, output logits that drift, loss spikes) shows only
in training: qk-layernorm is applied when the trials show it helps; z-loss, warmup, a lower
learning rate, clipping and Adam's ε are recommended with what they measurably did
(:mod:`gradwatch.remedies.trials`).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from gradwatch.errors import GradwatchError, GradwatchTypeError, GradwatchValueError
from gradwatch.jsonable import json_number
from gradwatch.remedies._gains import dominant_family
from gradwatch.remedies._sequential import block_sizes
from gradwatch.remedies._targets import check_model, check_positive
from gradwatch.remedies.activation import swap_activation
from gradwatch.remedies.fix_report import FixReport, architecture_signature, recommendations
from gradwatch.remedies.init_schemes import he_init_, orthogonal_init_, xavier_init_
from gradwatch.remedies.lsuv import lsuv_init_
from gradwatch.remedies.normalization import insert_norm
from gradwatch.remedies.residual import add_residual
from gradwatch.remedies.trials import Trial, check_trial, verify_in_training
from gradwatch.structure import HE_SCALE, describe, drawn_at

if TYPE_CHECKING:
    from gradwatch.check import Checkup

#: The kinds of change ``fix`` may make, in the order it tries them.
KINDS = ("init", "activation", "normalization", "residual")

#: Remedy (function) name → the kind of change it makes.
REMEDY_KINDS = {
    "he_init_": "init",
    "xavier_init_": "init",
    "orthogonal_init_": "init",
    "lsuv_init_": "init",
    "swap_activation": "activation",
    "insert_norm": "normalization",
    "add_residual": "residual",
}

#: Remedies of a recurrent cell's gates or decay (their biases, its eigenvalues): fix has no
#: candidate for them, and their names must not read as an init scheme of every layer.
CELL_REMEDIES = ("chrono_init", "slow_decay_init", "forget_gate_bias")

#: Verdicts after which fix changes nothing: healthy, or "uncertain" (outside what a checkup
#: can judge, so no remedy could be verified).
SETTLED = ("healthy", "uncertain")

#: A candidate must lower the backprop spread by this many decades to count as better.
MIN_IMPROVEMENT = 0.1


@dataclass
class _Candidate:
    """One way to change the model: ``apply(copy) -> model`` and what it is."""

    name: str
    details: dict[str, Any]
    apply: Callable[[nn.Module], nn.Module]

    @property
    def kind(self) -> str:
        return REMEDY_KINDS[self.name]


@dataclass
class _Trial:
    """A candidate applied to a copy and checked."""

    model: nn.Module
    checkup: Checkup
    score: tuple[int, float]
    entry: dict[str, Any]  # its line in FixReport.tried


def fix(
    model: nn.Module,
    inputs: Any,
    targets: Any = None,
    loss_fn: Callable[..., Any] | None = None,
    allow: str | Iterable[str] = KINDS,
    max_rounds: int = 4,
    trial: Trial | None = None,
) -> tuple[nn.Module, FixReport]:
    """Return a fixed copy of ``model`` and a report of what was changed and measured.

    The model is checked with :func:`gradwatch.check` on ``inputs``; if it is not healthy,
    remedies are chosen from the findings (see the module docstring for the order and the
    candidates), each applied to a deep copy and checked again, until a check says healthy.
    It is meant for a network before training: the init remedies redraw every Linear/Conv
    weight, pretrained or frozen ones included (pass ``allow`` without "init" to keep them).

    Args:
        model: the network; never modified (everything happens on ``copy.deepcopy(model)``).
        inputs: a representative batch, as :func:`gradwatch.check` takes it (a tensor, or a
            tuple of tensors for ``model(*inputs)``); LSUV and the activation gains are
            measured on it.
        targets: targets for ``loss_fn``, passed to :func:`gradwatch.check`.
        loss_fn: the loss, passed to :func:`gradwatch.check`.
        allow: the kinds of change allowed, any of "init", "activation", "normalization",
            "residual" (a name or a collection of names). ``("init",)`` keeps the
            architecture: same modules, same parameter shapes, new weights.
        max_rounds: the most remedies applied (each is followed by a check).
        trial: short seeded trainings for what a checkup cannot judge (see the module
            docstring); None: checkups only.

    Returns:
        ``(fixed_model, report)``: the best model found (a copy even when nothing was
        applied) and a :class:`FixReport` with the checkups before and after, the remedies
        applied, the candidates tried and recommendations for the training loop.

    Raises:
        GradwatchValueError: an unknown ``allow`` value, or a bad ``max_rounds``.
        GradwatchTypeError: ``model`` is not an nn.Module, or it cannot be deep-copied.

    References:
        Glorot & Bengio 2010; He et al. 2015; Mishkin & Matas 2016; Ioffe & Szegedy 2015;
        He et al. 2016; Pascanu, Mikolov & Bengio 2013 (clipping).

    """
    from gradwatch.check import check

    check_model(model)
    kinds = check_allow(allow)
    check_positive("max_rounds", max_rounds, integer=True)
    if trial is not None:
        trial = check_trial(trial)

    def measure(m: nn.Module) -> Checkup:
        return check(m, inputs, targets=targets, loss_fn=loss_fn)

    before = measure(model)
    work = _copy(model)
    current = _Trial(work, before, _score(before), {})
    applied: list[tuple[str, dict[str, Any]]] = []
    tried: list[dict[str, Any]] = []

    if before.verdict not in SETTLED:
        for kind in _plan(before, kinds):
            if len(applied) >= max_rounds or current.checkup.verdict in SETTLED:
                break
            best: tuple[_Candidate, _Trial] | None = None
            for cand in _candidates(kind, current, inputs):
                attempt = _try(cand, current.model, measure, tried)
                if attempt is not None and (best is None
                                            or _better(attempt.score, best[1].score)):
                    best = (cand, attempt)
                if attempt is not None and attempt.checkup.verdict in SETTLED:
                    break
            if best is not None and _better(best[1].score, current.score):
                cand, current = best
                current.entry["accepted"] = True
                applied.append((cand.name, {**cand.details, **_outcome(current)}))

    recs, trials = recommendations(before, current.checkup), None
    if trial is not None:  # training in the loop: what a checkup cannot judge
        trained, trials, more = verify_in_training(current.model, trial, loss_fn, kinds)
        recs += more
        if trials["applied"]:
            checkup = measure(trained)
            current = _Trial(trained, checkup, _score(checkup), {})
            applied.append(("qk_layernorm_", {"kind": "normalization", "norm": "qk-layernorm",
                                              "rewritten": trials["rewritten"],
                                              "verified_by": "trials", **_outcome(current)}))
    report = FixReport(
        before=before,
        after=current.checkup,
        applied=applied,
        changed_architecture=architecture_signature(model) != architecture_signature(current.model),
        recommendations=recs,
        tried=tried,
        allow=kinds,
        new_architecture=repr(current.model),
        trials=trials,
    )
    return current.model, report


# --- validation ---------------------------------------------------------------------------


def check_allow(allow: object) -> tuple[str, ...]:
    """Return the allowed kinds in canonical order; raise a gradwatch error for bad values."""
    if isinstance(allow, str):
        allow = (allow,)
    try:
        values = list(allow)  # type: ignore[call-overload]
    except TypeError:
        raise GradwatchTypeError(
            f"allow must be a kind name or a collection of them, got {type(allow).__name__}; "
            f"valid kinds: {', '.join(KINDS)}"
        ) from None
    unknown = [v for v in values if v not in KINDS]
    if unknown:
        raise GradwatchValueError(
            f"allow has unknown kinds {unknown}; valid kinds are {', '.join(KINDS)} "
            '(e.g. allow=("init",) to keep the architecture)'
        )
    if not values:
        raise GradwatchValueError(f"allow is empty; name at least one of {', '.join(KINDS)}")
    return tuple(k for k in KINDS if k in values)


def _copy(model: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except Exception as err:
        raise GradwatchTypeError(
            f"model: fix works on a deep copy so that your model stays as it is, but "
            f"copy.deepcopy failed ({type(err).__name__}: {err}); make the model deep-copyable "
            "(no open files, locks or generators as attributes)"
        ) from err


# --- scoring ------------------------------------------------------------------------------


def backprop_spread(checkup: Checkup) -> float:
    """log10(max / min) of the per-layer ``backprop_norm`` (``grad_norm`` if missing).

    0 when the back-propagated signal has the same size in every layer; about
    L·|log10 χ| for L layers with per-layer factor χ. Infinite when a value is zero or not
    finite (a vanished or overflowed signal).
    """
    table = checkup.table
    for column in ("backprop_norm", "grad_norm"):
        if column in table.columns:
            values = np.asarray(table[column], dtype=np.float64)
            values = values[~np.isnan(values)] if column == "backprop_norm" else values
            if len(values):
                break
    else:
        return math.inf
    if len(values) < 2:
        return 0.0
    if not np.all(np.isfinite(values)) or np.any(values <= 0.0):
        return math.inf
    return float(np.log10(values.max() / values.min()))


def _score(checkup: Checkup) -> tuple[int, float]:
    verdict = checkup.verdict
    rank = 0 if verdict in SETTLED else 2 if verdict == "nonfinite" else 1
    loss = getattr(checkup, "loss", None)
    if loss is not None and not math.isfinite(float(loss)):
        rank = 2
    return rank, backprop_spread(checkup)


def _better(a: tuple[int, float], b: tuple[int, float]) -> bool:
    """Tell whether score ``a`` is clearly better than ``b``."""
    if a[0] != b[0]:
        return a[0] < b[0]
    if math.isinf(b[1]):
        return not math.isinf(a[1])
    return a[1] < b[1] - MIN_IMPROVEMENT


def _outcome(trial: _Trial) -> dict[str, Any]:
    return {"verdict": trial.checkup.verdict, "backprop_spread": json_number(trial.score[1])}


# --- planning -----------------------------------------------------------------------------


def _plan(before: Checkup, kinds: tuple[str, ...]) -> list[str]:
    """Allowed kinds, those the findings recommend first, each group in canonical order."""
    named = {
        kind
        for finding in before.findings
        for remedy in finding.remedies
        if (kind := _kind_of(remedy)) is not None
    }
    return [k for k in kinds if k in named] + [k for k in kinds if k not in named]


def _kind_of(remedy: str) -> str | None:
    """Map a finding's remedy name ("he_init", "lsuv", "batchnorm", ...) to a kind, or None.

    Training-loop remedies ("clip_grad_norm", "lower_lr") map to None: fix cannot apply them.
    """
    name = remedy.lower().replace("-", "_")
    if name in REMEDY_KINDS:
        return REMEDY_KINDS[name]
    if name in CELL_REMEDIES:
        return None
    tokens = set(name.split("_"))
    if tokens & {"clip", "lr"}:
        return None
    if tokens & {"init", "he", "xavier", "glorot", "kaiming", "orthogonal", "lsuv", "lecun"}:
        return "init"
    if tokens & {"activation", "relu", "leaky", "gelu", "elu", "selu", "silu"}:
        return "activation"
    if any(t.endswith("norm") for t in tokens):
        return "normalization"
    if tokens & {"residual", "skip", "shortcut"}:
        return "residual"
    return None


def _candidates(kind: str, current: _Trial, inputs: Any) -> list[_Candidate]:
    model, verdict = current.model, current.checkup.verdict
    if kind == "init":
        found = _init_candidates(dominant_family(model, inputs), verdict, inputs)
        init = (current.checkup.run.meta.get("structure") or {}).get("init_scale")
        if drawn_at(init, HE_SCALE):  # redrawn at the scale it has, nothing would change
            found = [c for c in found if c.details.get("scheme") != "he"]
        return found
    if kind == "activation":
        return _activation_candidates(model, verdict, inputs)
    if kind == "normalization":
        if describe(model)["has_norm"]:
            return []  # never offer a model what it already has
        return [
            _Candidate(
                "insert_norm",
                {"kind": "normalization", "norm": norm, "after": "linear"},
                lambda m, norm=norm: insert_norm(m, kind=norm, after="linear"),
            )
            for norm in ("batch", "layer")
        ]
    if (current.checkup.run.meta.get("structure") or {}).get("shortcuts"):
        return []  # shortcuts (residual additions, dense concatenations) are there already
    return [
        _Candidate(
            "add_residual",
            {"kind": "residual", "block_size": size, "zero_init": True},
            lambda m, size=size: add_residual(m, block_size=size, zero_init=True),
        )
        for size in block_sizes(model)
    ]


def _init_candidates(family: str, verdict: str, inputs: Any) -> list[_Candidate]:
    def he(m: nn.Module) -> dict[str, Any]:
        return he_init_(m, inputs)

    def xavier(m: nn.Module) -> dict[str, Any]:
        return xavier_init_(m, inputs, gain=1.0)

    def orthogonal(m: nn.Module) -> dict[str, Any]:
        return orthogonal_init_(m, inputs, gain=1.0 if family != "rectifier" else "activation")

    def lsuv(m: nn.Module) -> dict[str, Any]:
        return lsuv_init_(m, inputs)

    schemes: dict[str, tuple[str, Callable[[nn.Module], dict[str, Any]], Any]] = {
        "he": ("he_init_", he, "activation"),
        "xavier": ("xavier_init_", xavier, 1.0),
        "orthogonal": (
            "orthogonal_init_",
            orthogonal,
            "activation" if family == "rectifier" else 1.0,
        ),
        "lsuv": ("lsuv_init_", lsuv, None),
    }
    if family == "rectifier":
        order = ["he", "orthogonal", "lsuv"] if verdict == "exploding" else ["he", "lsuv"]
    elif family == "sigmoid":
        order = ["he", "lsuv", "xavier"]  # he at the sigmoid's gain 1: LeCun's N(0, 1/n)
    else:  # tanh, linear
        order = ["xavier", "orthogonal", "lsuv"]
    return [_init_candidate(scheme, *schemes[scheme], family) for scheme in order]


def _init_candidate(
    scheme: str,
    name: str,
    fn: Callable[[nn.Module], dict[str, Any]],
    gain: Any,
    family: str,
) -> _Candidate:
    details: dict[str, Any] = {"kind": "init", "scheme": scheme, "activation": family}
    if gain is not None:
        details["gain"] = gain

    def apply(m: nn.Module) -> nn.Module:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            record = fn(m)
        details["layers"] = record
        if caught:
            details["warnings"] = [str(w.message) for w in caught]
        return m

    return _Candidate(name, details, apply)


def _activation_candidates(model: nn.Module, verdict: str, inputs: Any) -> list[_Candidate]:
    present = {type(m) for m in model.modules()}
    if verdict == "dead" and nn.ReLU in present:
        swaps = [(nn.ReLU, "leaky_relu")]
    else:
        swaps = [
            (cls, "relu")
            for cls in (nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Softsign, nn.Hardsigmoid)
            if any(isinstance(m, cls) for m in model.modules())
        ]
    if not swaps:
        return []
    details: dict[str, Any] = {
        "kind": "activation",
        "swaps": {old.__name__: new for old, new in swaps},
        "reinit": "he",
    }

    def apply(m: nn.Module) -> nn.Module:
        replaced: list[str] = []
        for old, new in swaps:
            replaced += swap_activation(m, old, new, reinit=True, inputs=inputs)
        details["replaced"] = replaced
        return m

    return [_Candidate("swap_activation", details, apply)]


# --- trying -------------------------------------------------------------------------------


def _try(
    cand: _Candidate,
    model: nn.Module,
    measure: Callable[[nn.Module], Checkup],
    tried: list[dict[str, Any]],
) -> _Trial | None:
    """Apply ``cand`` to a copy of ``model`` and check it; None if it does not apply."""
    entry: dict[str, Any] = {"remedy": cand.name, "kind": cand.kind, "accepted": False}
    entry.update({k: v for k, v in cand.details.items() if k not in ("kind", "layers")})
    tried.append(entry)
    try:
        changed = cand.apply(_copy(model))
        checkup = measure(changed)
    except GradwatchError as err:
        entry["skipped"] = str(err)
        return None
    trial = _Trial(changed, checkup, _score(checkup), entry)
    entry.update(_outcome(trial))
    return trial
