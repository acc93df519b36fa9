"""What a zoo case is: a model, a batch to check it on, a short training run, and the truth.

A :class:`Case` states two expected verdicts, one for ``gw.check`` on a batch at
initialisation and one for ``gw.diagnose`` of the run ``gw.watch`` records while the zoo
trains the model, and where that truth comes from: a paper's result (cited as
/work/shared/REFERENCES.md does) or the zoo's own training run. Either way the training run
is checked, not assumed: :class:`Train` says what the loss must do (fall by a stated
fraction, stall, or diverge) and the zoo flags a case whose training outcome did not hold.
A case may also name remedies the model already has (``forbid_remedies``): the zoo flags a
finding that offers one of them.

This is the one Case API of both sets (``benchmarks/README.md``): the development set
(``benchmarks/zoo/*.py``) and the held-out set (``benchmarks/zoo/heldout/``, a package whose
``CASES`` lists its cases). Fields are only ever added, with defaults, so a case written for
an earlier version keeps working.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

#: The verdicts a case may expect (gradwatch's vocabulary).
VERDICTS = ("healthy", "vanishing", "exploding", "nonfinite", "dead", "saturated", "uncertain")

#: What the loss of a training run is expected to do.
OUTCOMES = ("trains", "stalls", "diverges")

Batch = tuple[torch.Tensor | tuple[torch.Tensor, ...], torch.Tensor | None]
LossFn = Callable[[object, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Train:
    """A short training run and what its loss must do.

    Attributes:
        steps: optimizer steps.
        optimizer: ``optimizer(model) -> torch.optim.Optimizer``.
        batch: ``batch(i) -> (inputs, targets)``, the i-th micro-batch (deterministic in i).
        outcome: "trains" (the loss falls by at least ``drop`` of its starting value),
            "stalls" (it falls by less than ``drop``, and stays finite) or "diverges" (it
            becomes non-finite, or ends above ``rise`` times its starting value).
        drop: the fraction of the starting loss a "trains" run must lose; the most a
            "stalls" run may lose.
        rise: the factor above the starting loss that counts as diverged.
        model: a smaller model of the same design to train (default: the checked model).
        loss: ``loss(output, targets)``; default: the case's loss.
        accumulate: micro-batches per optimizer step (gradient accumulation).
        scaler_init_scale: if set, train under a ``torch.amp.GradScaler`` with this initial
            scale (fp16-style loss scaling; a huge scale makes the first steps overflow).
        autocast: if set (``torch.float16`` or ``torch.bfloat16``), the forward pass and the
            loss run under ``torch.autocast("cpu", dtype=autocast)``: real mixed-precision
            training, its back-propagated signal in that dtype.
        window: steps averaged at each end of the loss curve.
        baseline: the loss of a model that has learnt nothing (ln 10 for the digits): the
            reference ``drop`` is measured against (default: the starting loss). A net that
            starts above chance and only falls to chance has not trained.
    """

    steps: int
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    batch: Callable[[int], Batch]
    outcome: str
    drop: float = 0.3
    rise: float = 3.0
    model: Callable[[], nn.Module] | None = None
    loss: LossFn | None = None
    accumulate: int = 1
    scaler_init_scale: float | None = None
    autocast: torch.dtype | None = None
    window: int = 10
    baseline: float | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")


@dataclass(frozen=True)
class Case:
    """One model of the zoo with its ground truth.

    Attributes:
        name: unique, lower case, no spaces.
        family: "mlp", "cnn", "resnet", "transformer", "recurrent", "setup" or "precision".
        model: builds the model (seeded by the runner), initialised as the case says.
        batch: the batch ``gw.check`` runs on: ``(inputs, targets)``.
        expect_init: expected ``gw.check(...).verdict`` at initialisation.
        expect_run: expected verdict of ``gw.diagnose`` on the training run.
        source: where the truth comes from: a paper ("Author et al. YEAR, where: what") or
            "zoo training run" (then the run's outcome is the evidence).
        train: the training run.
        loss: ``loss(output, targets)`` for the check and the run; None: gradwatch's
            default (cross-entropy for class labels).
        why: what a reader needs to know: the mechanism, and why an "uncertain" is
            uncertain.
        quick: part of the quick subset run by the test suite.
        seed: for the model and the batches.
        budget_s: CPU seconds the case may take (check and run, one thread); the zoo
            reports the cases over budget.
        precision: the low-precision format the case is about ("fp16", "bf16", "e4m3",
            "e5m2"): the check and the run are watched for it (``precision=``).
        loss_scale: the check's ``loss_scale=`` (the run's scale is its GradScaler's).
        forbid_remedies: remedy names (``gradwatch.diagnose._advice.PHRASES``) a finding
            must not offer, at init or after the run, because the model already has what
            they would add (e.g. "residual" for a DenseNet, "he_init" for He-init weights).
        measured: the figures measured when the truth was written down (held-out cases:
            ``benchmarks/zoo_heldout_truth.py`` measures them by brute-force autograd and a
            training run, without gradwatch), name -> value; empty for the development
            zoo, whose truth cites papers and its training runs.
    """

    name: str
    family: str
    model: Callable[[], nn.Module]
    batch: Callable[[], Batch]
    expect_init: str
    expect_run: str
    source: str
    train: Train
    loss: LossFn | None = None
    why: str = ""
    quick: bool = False
    seed: int = 0
    budget_s: float = 15.0
    precision: str | None = None
    loss_scale: float | None = None
    forbid_remedies: tuple[str, ...] = ()
    measured: dict[str, float] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for v in (self.expect_init, self.expect_run):
            if v not in VERDICTS:
                raise ValueError(f"{self.name}: verdict must be one of {VERDICTS}, got {v!r}")
        if self.expect_init == "uncertain" or self.expect_run == "uncertain":
            if not self.why:
                raise ValueError(f"{self.name}: an 'uncertain' case must say why")
