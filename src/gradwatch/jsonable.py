"""One helper turns numbers into JSON: :func:`jsonable`, with one convention for NaN and ±inf.

Strict JSON has no NaN or infinity, and Python's ``json`` writes the non-standard tokens
``NaN``/``Infinity`` unless told not to. gradwatch writes every JSON file (``meta.json``,
``findings.jsonl``, ``--json`` output, the HTML report's data) through this helper, with one
convention:

- a finite float stays a number; an integral NumPy/torch scalar becomes an ``int``;
- NaN becomes the string ``"nan"``, +inf ``"inf"`` and −inf ``"-inf"`` (the sign is kept);
- ``None`` stays ``null``: it means *missing* (not recorded, does not apply), which is not the
  same as a recorded NaN;
- NumPy arrays and torch tensors become (nested) lists, dataclass instances dicts, paths and
  other objects their ``str``; dict keys become strings; tuples and sets become lists.

Tables whose NaN cells stand for *missing* (a statistic that does not apply to a layer, a layer
that one of two models lacks) write them as ``null`` with :func:`json_cell`; every other
number goes through :func:`json_number` or :func:`jsonable`. :func:`from_jsonable` reads the
three strings back as floats.
"""

from __future__ import annotations

import math
from dataclasses import asdict, is_dataclass
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


def json_cell(x: float) -> float | str | None:
    """A table cell whose NaN means *missing*: ``None`` for NaN, else :func:`json_number`.

    For tables where a NaN cell is not a recorded NaN but the absence of a value (a statistic
    that does not apply to the layer); ±inf keep their sign as ``"inf"`` and ``"-inf"``.
    """
    return None if math.isnan(x) else json_number(x)


def jsonable(obj: Any) -> Any:
    """``obj`` made of JSON types only, numbers under the module's convention (recursive).

    Args:
        obj: numbers, strings, None, dicts, lists/tuples/sets, NumPy scalars and arrays,
            torch tensors, dataclass instances, paths; anything else becomes its ``str``.

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
    if is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(asdict(obj))
    tolist = getattr(obj, "tolist", None)  # NumPy scalars/arrays, torch tensors
    if callable(tolist) and type(obj).__module__.split(".")[0] in ("numpy", "torch"):
        return jsonable(tolist())
    return str(obj)


def from_jsonable(value: Any) -> Any:
    """Read numbers written by :func:`jsonable` back: ``"nan"``/``"inf"``/``"-inf"`` → float.

    Recursive: list items and dict values are read too (dict keys are left as they are), into
    new containers; any other value is returned as it is.
    """
    if isinstance(value, str):
        return _BACK.get(value, value)
    if isinstance(value, dict):
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value
