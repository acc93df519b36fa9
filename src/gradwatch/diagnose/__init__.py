"""Diagnosis: rules that turn recorded statistics into :class:`~gradwatch.findings.Finding` s.

One module per rule; each is a function ``rule(view) -> list[Finding]`` over a
:class:`~gradwatch.diagnose._view.RunView` (layers input side first, wide per-statistic
tables, meta, and whether the run is a one-batch checkup). :data:`RULES` lists them in the
order their findings are returned. The same rules serve a training run (``gw.watch`` ->
``gw.load``) and a checkup (``gw.check``).

Remedy names used in findings: "he_init", "xavier_init", "orthogonal", "lsuv", "relu",
"leaky_relu", "tanh_or_relu", "batchnorm", "residual", "clip_grad_norm", "lower_lr", "adam",
"check_inputs", "pre_ln", "warmup", "forget_gate_bias", "chrono_init", "slow_decay_init",
"lstm_or_gru", "shorter_truncation", "zero_init_last_norm", "fixup", and for low precision
"grad_scaler", "bf16", "fp32_layers", "unit_scaling", "lower_loss_scale" (see
``_advice.PHRASES``), chosen from what the model has (``_advice``).

The verdict words and thresholds live in :mod:`gradwatch.verdicts`, shared with
``gw.check``, ``gw.fix`` and ``gw.theory.predict``. Importing this package hands its rules
down to :func:`gradwatch.check.check` (``check`` sits below ``diagnose`` and takes them as an
argument).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from gradwatch.check import Checkup, use_rules
from gradwatch.diagnose import (
    dead,
    diverging,
    exploding,
    healthy_deep,
    nonfinite,
    not_learning,
    precision,
    saturated,
    stalled,
    temporal,
    vanishing,
)
from gradwatch.diagnose._view import RunView
from gradwatch.diagnose.store import store_findings
from gradwatch.errors import GradwatchTypeError
from gradwatch.findings import SEVERITY_RANK, Finding
from gradwatch.store.reader import Run, check_meta, load
from gradwatch.verdicts import VERDICT_PRECEDENCE, Findings, verdict, verdict_of_kind

Rule = Callable[[RunView], list[Finding]]

#: Every rule, in the order its findings are reported.
RULES: list[Rule] = [
    nonfinite.rule,
    diverging.rule,
    exploding.rule,
    vanishing.rule,
    precision.underflow,
    precision.overflow,
    temporal.rule,
    dead.rule,
    saturated.rule,
    stalled.rule,
    healthy_deep.rule,
    not_learning.rule,
]


def diagnose(run: Run | str | Path | Checkup) -> Findings:
    """Diagnose a training run or a checkup.

    Args:
        run: a :class:`~gradwatch.store.reader.Run`, the path of a run directory, or a
            :class:`~gradwatch.check.Checkup`.

    Returns:
        the findings of every rule in :data:`RULES`, most severe kinds first: a list
        (:class:`~gradwatch.findings.Findings`) that ``print`` shows as the verdict and one
        paragraph per finding.

    Raises:
        GradwatchTypeError: ``run`` is none of those.
        RunDirectoryError: the path is not a readable run directory.
    """
    return run_rules(view_of(run))


def view_of(run: Run | str | Path | Checkup) -> RunView:
    """The :class:`RunView` the rules read, for anything :func:`diagnose` accepts."""
    if isinstance(run, Checkup):
        return RunView(run.run, is_checkup=True)
    if isinstance(run, str | Path):
        run = load(run)
    if not isinstance(run, Run):
        raise GradwatchTypeError(
            f"run must be a gradwatch Run, a run directory path or a Checkup, got "
            f"{type(run).__name__}; pass gw.load('runs/a'), 'runs/a' or gw.check(model, x)"
        )
    if not isinstance(run.meta, dict):
        raise GradwatchTypeError(f"run.meta must be a dict, got {type(run.meta).__name__}")
    check_meta(run.meta, f"run {str(run.path) if run.path else '(in memory)'}: meta")
    return RunView(run, is_checkup=bool(run.meta.get("checkup")))


def run_rules(view: RunView, rules: Iterable[Rule] = RULES) -> Findings:
    """Apply ``rules`` to ``view`` and collect their findings.

    The ``not_learning`` finding speaks only when no other rule found a cause: it is dropped
    when another finding of severity warning or error counts toward a verdict.
    """
    findings: list[Finding] = []
    for rule in rules:
        findings.extend(rule(view))
    explained = any(
        f.kind != "uncertain" and verdict_of_kind(f.kind) and SEVERITY_RANK[f.severity] >= 1
        for f in findings
    )
    if explained:
        findings = [f for f in findings if f.evidence.get("rule") != "not_learning"]
    return Findings(findings)


def diagnose_run(run: Run, is_checkup: bool = False) -> Findings:
    """Apply every rule to a Run (the form :func:`gradwatch.check.check` takes its rules in)."""
    return run_rules(RunView(run, is_checkup=is_checkup))


use_rules(diagnose_run)


__all__ = [
    "RULES",
    "VERDICT_PRECEDENCE",
    "RunView",
    "diagnose",
    "diagnose_run",
    "run_rules",
    "store_findings",
    "verdict",
    "view_of",
]
