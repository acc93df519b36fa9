"""Diagnosis: rules that turn recorded statistics into :class:`~gradwatch.findings.Finding` s.

One module per rule; each is a function ``rule(view) -> list[Finding]`` over a
:class:`~gradwatch.diagnose._view.RunView` (layers input side first, wide per-statistic
tables, meta, and whether the run is a one-batch checkup). :data:`RULES` lists them in the
order their findings are returned. The same rules serve a training run (``gw.watch`` ->
``gw.load``) and a checkup (``gw.check``).

Remedy names used in findings: "he_init", "xavier_init", "orthogonal", "lsuv", "relu",
"leaky_relu", "tanh_or_relu", "batchnorm", "residual", "clip_grad_norm", "lower_lr", "adam",
"check_inputs".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from gradwatch.diagnose import (
    dead,
    exploding,
    healthy_deep,
    nonfinite,
    saturated,
    stalled,
    temporal,
    vanishing,
)
from gradwatch.diagnose._view import RunView
from gradwatch.diagnose.store import store_findings
from gradwatch.errors import GradwatchTypeError
from gradwatch.findings import SEVERITY_RANK, Finding
from gradwatch.store.reader import Run, load

if TYPE_CHECKING:
    from gradwatch.check import Checkup

Rule = Callable[[RunView], list[Finding]]

#: Every rule, in the order its findings are reported.
RULES: list[Rule] = [
    nonfinite.rule,
    exploding.rule,
    vanishing.rule,
    temporal.rule,
    dead.rule,
    saturated.rule,
    stalled.rule,
    healthy_deep.rule,
]

#: Verdict kinds, most severe first: the verdict is the first of these among the findings of
#: severity "warning" or "error" ("healthy" when there is none).
VERDICT_PRECEDENCE = ("nonfinite", "exploding", "vanishing", "dead", "saturated")


def diagnose(run: Run | str | Path | Checkup) -> list[Finding]:
    """Diagnose a training run or a checkup.

    Args:
        run: a :class:`~gradwatch.store.reader.Run`, the path of a run directory, or a
            :class:`~gradwatch.check.Checkup`.

    Returns:
        the findings of every rule in :data:`RULES`, most severe kinds first.

    Raises:
        GradwatchTypeError: ``run`` is none of those.
        RunDirectoryError: the path is not a readable run directory.
    """
    return run_rules(view_of(run))


def view_of(run: Run | str | Path | Checkup) -> RunView:
    """The :class:`RunView` the rules read, for anything :func:`diagnose` accepts."""
    from gradwatch.check import Checkup

    if isinstance(run, Checkup):
        return RunView(run.run, is_checkup=True)
    if isinstance(run, str | Path):
        run = load(run)
    if not isinstance(run, Run):
        raise GradwatchTypeError(
            f"run must be a gradwatch Run, a run directory path or a Checkup, got "
            f"{type(run).__name__}; pass gw.load('runs/a'), 'runs/a' or gw.check(model, x)"
        )
    return RunView(run, is_checkup=bool(run.meta.get("checkup")))


def run_rules(view: RunView, rules: Iterable[Rule] = RULES) -> list[Finding]:
    """Apply ``rules`` to ``view`` and collect their findings."""
    findings: list[Finding] = []
    for rule in rules:
        findings.extend(rule(view))
    return findings


def verdict(findings: Iterable[Finding]) -> str:
    """Return "healthy" or the most severe kind among warning/error findings."""
    kinds = {f.kind for f in findings if SEVERITY_RANK.get(f.severity, 0) >= 1}
    for kind in VERDICT_PRECEDENCE:
        if kind in kinds:
            return kind
    return "healthy"


__all__ = [
    "RULES",
    "VERDICT_PRECEDENCE",
    "RunView",
    "diagnose",
    "run_rules",
    "store_findings",
    "verdict",
    "view_of",
]
