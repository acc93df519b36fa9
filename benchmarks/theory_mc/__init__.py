"""``gw.theory.predict`` against brute-force Monte Carlo on residual nets and transformers.

:data:`CONFIGS` lists the configurations (:mod:`.configs`), :func:`check_config` predicts,
measures and compares one (:mod:`.run`); the command line is
``python benchmarks/theory_mc.py``.
"""

from __future__ import annotations

from .configs import BY_NAME, CONFIGS, Config
from .run import check_config, tolerance

__all__ = ["BY_NAME", "CONFIGS", "Config", "check_config", "tolerance"]
