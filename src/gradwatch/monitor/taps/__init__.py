"""The Monitor's taps, one module per source of statistics (see :mod:`gradwatch.monitor.tap`).

Importing a module registers its tap; the order here is the order in which a Monitor calls
them (the parameter-gradient tap first, so that later taps can read its results on the
step's gradient pass; blocks are emitted in this order).
"""

from gradwatch.monitor.tap import TAPS
from gradwatch.monitor.taps import (  # noqa: F401 - imported to register the taps
    activation,
    backprop,
    forensics,
    grad,
    lr,
    precision,
    scalars,
    shard,
    temporal,
    update,
)

__all__ = ["TAPS"]
