"""Layer names for narrow places (terminal columns, figure ticks): shortened or folded.

The functions live in :mod:`gradwatch.wording` (which the light commands import without the
report package); they are named here too, where the report's code looks for them.
"""

from __future__ import annotations

from gradwatch.wording import fold, shorten

__all__ = ["fold", "shorten"]
