"""A stand-in experiment for the CLI tests: its claim holds or not as asked."""

import time
from pathlib import Path

from gradwatch.experiments import base


def claims(numbers):
    return [
        base.claim("x is positive", numbers["x"] > 0, x=numbers["x"]),
        base.claim("y is positive (full scale)", numbers["y"] > 0, scale="full", y=numbers["y"]),
    ]


def run(out_dir, quick=False, seed=0, x=1.0, y=-1.0, executor="local"):
    numbers = {"x": x, "y": y, "executor": executor}
    return base.finish(
        Path(out_dir),
        "fake",
        {"x": x},
        quick=quick,
        seed=seed,
        numbers=numbers,
        claims=claims(numbers),
        started=time.perf_counter(),
    )
