"""The gradwatch model zoo: models with known gradient health, and the truth's source.

:data:`CASES` lists every case (see :class:`~.case.Case`); :func:`~.run.run_case` runs one.
The command line is ``python benchmarks/zoo.py``.
"""

from __future__ import annotations

from . import cnn, mlp, precision, recurrent, resnet, setups, transformer
from .case import OUTCOMES, VERDICTS, Case, Train

CASES: list[Case] = [
    *mlp.CASES, *cnn.CASES, *resnet.CASES, *transformer.CASES, *recurrent.CASES, *setups.CASES,
    *precision.CASES,
]
BY_NAME: dict[str, Case] = {c.name: c for c in CASES}
assert len(BY_NAME) == len(CASES), "case names must be unique"

__all__ = ["BY_NAME", "CASES", "OUTCOMES", "VERDICTS", "Case", "Train"]
