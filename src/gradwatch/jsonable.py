"""One helper turns numbers into JSON: :func:`jsonable`, with one convention for NaN and ±inf.

Strict JSON has no NaN or infinity, and Python's ``json`` writes the non-standard tokens
``NaN``/``Infinity`` unless told not to. gradwatch writes every JSON file (``meta.json``,
``findings.jsonl``, ``--json`` output, the HTML report's data) through this helper, with one
convention:

- a finite float stays a number; an integral NumPy/torch scalar becomes an ``int``;
- NaN becomes the string ``"nan"``, +inf ``"inf"`` and −inf ``"-inf"`` (the sign is kept);
- ``None`` stays ``null``: it means *missing* (not recorded, does not apply), which is not the
  same as a recorded NaN;
- NumPy arrays and torch tensors become (nested) lists, paths and other objects their ``str``;
  dict keys become strings; tuples and sets become lists.

:func:`from_jsonable` reads the three strings back as floats.
"""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any

NAN, POS_INF, NEG_INF = "nan", "inf", "-inf"
_BACK = {NAN: math.nan, POS_INF: math.inf, NEG_INF: -math.inf}


def json_number(x: float) -> float | str:
    """A float under the convention: itself if finite, else ``"nan"``, ``"inf"`` or ``"-inf"``."""
    if math.isnan(x):
        return NAN
    if math.isinf(x):
        return POS_INF if x > 0 else NEG_INF
    return x


def jsonable(obj: Any) -> Any:
    """``obj`` made of JSON types only, numbers under the module's convention (recursive).

    Args:
        obj: numbers, strings, None, dicts, lists/tuples/sets, NumPy scalars and arrays,
            torch tensors, paths; anything else becomes its ``str``.

    Returns:
        an object ``json.dumps(..., allow_nan=False)`` accepts.
    """
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return json_number(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [jsonable(v) for v in obj]
    if isinstance(obj, PurePath):
        return str(obj)
    tolist = getattr(obj, "tolist", None)  # NumPy scalars/arrays, torch tensors
    if callable(tolist) and type(obj).__module__.split(".")[0] in ("numpy", "torch"):
        return jsonable(tolist())
    return str(obj)


def from_jsonable(value: Any) -> Any:
    """Read a number written by :func:`jsonable` back: ``"nan"``/``"inf"``/``"-inf"`` → float."""
    if isinstance(value, str) and value in _BACK:
        return _BACK[value]
    return value
