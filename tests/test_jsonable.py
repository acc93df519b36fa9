"""One JSON convention for numbers: NaN and ±inf as strings, the sign kept, None as missing."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from gradwatch.jsonable import from_jsonable, jsonable


def test_the_convention():
    got = jsonable({"a": math.nan, "b": -math.inf, "c": math.inf, "d": None, 1: 2.5})
    assert got == {"a": "nan", "b": "-inf", "c": "inf", "d": None, "1": 2.5}
    # -inf keeps its sign (one of the old helpers wrote it as "nan")
    assert from_jsonable(jsonable(-math.inf)) == -math.inf


def test_numpy_torch_and_paths():
    got = jsonable({"x": np.float32(1.5), "n": np.int64(3), "t": torch.tensor([1.0, math.nan]),
                    "arr": np.array([[1, 2]]), "p": Path("/a/b"), "tup": (1, 2)})
    assert got == {"x": 1.5, "n": 3, "t": [1.0, "nan"], "arr": [[1, 2]], "p": "/a/b",
                   "tup": [1, 2]}
    assert type(got["n"]) is int


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_every_float_round_trips_through_strict_json(x):
    text = json.dumps(jsonable([x]), allow_nan=False)
    back = from_jsonable(json.loads(text)[0])
    assert (math.isnan(back) and math.isnan(x)) or back == x


def test_dataclasses_become_dicts():
    @dataclass(frozen=True)
    class Config:
        widths: tuple[int, ...] = (2, 3)
        lr: float = math.inf

    assert jsonable({"cfg": Config()}) == {"cfg": {"widths": [2, 3], "lr": "inf"}}
    assert jsonable(Config) == str(Config)  # a class is not an instance
