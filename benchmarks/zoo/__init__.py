"""The gradwatch model zoo: models with known gradient health, and the truth's source.

Two sets share one Case API (:class:`~.case.Case`; ``benchmarks/README.md``):

- the **development set**, :data:`CASES` (this package's modules): the rules are designed and
  checked against it;
- the **held-out set**, :func:`heldout_cases` (the package ``benchmarks/zoo/heldout/``, when
  present, whose ``CASES`` lists its cases): families no rule was tuned on, with the truth
  written down from measurement and training before gradwatch ran on them. It is never
  tuned on: a held-out case that causes a rule change moves to the development set and a
  new one replaces it.

:func:`~.run.run_case` runs one case. The command line is ``python benchmarks/zoo.py``.
"""

from __future__ import annotations

import importlib
import importlib.util

from . import (
    cnn,
    from_heldout,
    instability,
    mlp,
    moved,
    precision,
    recurrent,
    resnet,
    setups,
    transformer,
)
from .case import OUTCOMES, VERDICTS, Case, Train

CASES: list[Case] = [
    *mlp.CASES, *cnn.CASES, *resnet.CASES, *transformer.CASES, *instability.CASES,
    *recurrent.CASES, *setups.CASES, *precision.CASES, *moved.CASES, *from_heldout.CASES,
]
BY_NAME: dict[str, Case] = {c.name: c for c in CASES}
assert len(BY_NAME) == len(CASES), "case names must be unique"

#: The sets, in the order the zoo reports them.
SET_NAMES = ("dev", "heldout")


def heldout_cases() -> list[Case]:
    """The held-out set's cases ([] when ``benchmarks/zoo/heldout/`` is not there)."""
    if importlib.util.find_spec(f"{__name__}.heldout") is None:
        return []
    module = importlib.import_module(f"{__name__}.heldout")
    cases = list(getattr(module, "CASES", []))
    clash = [c.name for c in cases if c.name in BY_NAME]
    if clash:
        raise ValueError(f"held-out case names {clash} are development case names too")
    return cases


def cases_of(name: str) -> list[Case]:
    """The cases of set ``name`` ("dev" or "heldout")."""
    if name == "dev":
        return list(CASES)
    if name == "heldout":
        return heldout_cases()
    raise ValueError(f"unknown set {name!r}; known: {', '.join(SET_NAMES)}")


__all__ = ["BY_NAME", "CASES", "OUTCOMES", "SET_NAMES", "VERDICTS", "Case", "Train",
           "cases_of", "heldout_cases"]
