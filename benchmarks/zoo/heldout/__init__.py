"""The held-out zoo: families the development zoo does not have, with measured truth.

Every case's truth (its expected verdicts at initialisation and after training, and what its
training run must do) was written down from brute-force measurements and a seeded training run
(:mod:`.measure`, ``benchmarks/zoo_heldout_truth.py``) before gradwatch was run on it. The
rules are never tuned on this set: a case that a rule change is made for moves to the
development zoo, and a new case replaces it.

:data:`CASES` are plain :class:`~benchmarks.zoo.case.Case` objects (the development zoo's
runner runs them), whose ``measured`` holds the figures recorded with the truth
(:mod:`.figures`); :data:`PROBES` says where each case's truth was measured.
"""

from __future__ import annotations

from dataclasses import replace

from . import attention, conv, dense, families2, families3, sequence, setups
from .common import Entry
from .figures import FIGURES
from .measure import Probe

#: Every case with its probe; each case carries the figures recorded with its truth.
ENTRIES: list[Entry] = [
    Entry(replace(e.case, measured=FIGURES.get(e.case.name, {})), e.probe)
    for e in (*conv.ENTRIES, *attention.ENTRIES, *sequence.ENTRIES, *dense.ENTRIES,
              *setups.ENTRIES, *families2.ENTRIES, *families3.ENTRIES)
]
CASES = [e.case for e in ENTRIES]
BY_NAME = {c.name: c for c in CASES}
PROBES: dict[str, Probe] = {e.case.name: e.probe for e in ENTRIES}
assert len(BY_NAME) == len(CASES), "case names must be unique"

__all__ = ["BY_NAME", "CASES", "ENTRIES", "PROBES", "Entry", "Probe"]
