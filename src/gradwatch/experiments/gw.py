"""The public API the experiments use, taken from the layers below them.

The experiments sit near the top of gradwatch's layers, under the package root: they read
``gw.watch``, ``gw.load``, ``gw.diagnose``, ``gw.theory`` and ``gw.remedies`` from here, so
that a script reads as a user's would without importing the root package.
"""

from __future__ import annotations

import gradwatch.remedies as remedies
import gradwatch.theory as theory
from gradwatch.diagnose import diagnose
from gradwatch.monitor import watch
from gradwatch.store import load

__all__ = ["diagnose", "load", "remedies", "theory", "watch"]
