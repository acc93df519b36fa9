"""Figures measured when the held-out truth was written: ``figures.json`` beside this file,
one case per line, written by ``python benchmarks/zoo_heldout_truth.py --record`` (never by
hand, and never after gradwatch has been run on a case).

Each case's ``Case.measured``; ``benchmarks/zoo_heldout_truth.py`` re-measures them and
reports any that drifted.
"""

from __future__ import annotations

import json
from pathlib import Path

#: Where the recorded figures live.
PATH = Path(__file__).with_name("figures.json")

#: {case: {figure: value}} (:data:`~.truth.RECORDED_KEYS`, 3 significant digits).
FIGURES: dict[str, dict[str, float]] = json.loads(PATH.read_text())
