"""A stand-in experiment for the CLI tests: its claims hold or not as asked, in every seed or
in some of them."""

from dataclasses import dataclass

import torch

from gradwatch.experiments import base, runner

NAME = "fake"


@dataclass(frozen=True)
class Config:
    x: float = 1.0
    y: float = -1.0


QUICK = Config()


def measure(cfg, out, seed, bar, executor="local"):
    # z is positive in even seeds only: in 2 of seeds 0, 1, 2 and in 1 of seeds 1, 2, 3
    z = cfg.x if seed % 2 == 0 else -cfg.x
    return {"x": cfg.x, "y": cfg.y, "z": z, "executor": executor,
            "threads": torch.get_num_threads()}  # fmt: skip


def claims(numbers):
    return [
        base.claim("x is positive", numbers["x"] > 0, x=numbers["x"]),
        base.claim("y is positive (full scale)", numbers["y"] > 0, scale="full", y=numbers["y"]),
        base.claim("z is positive", numbers["z"] > 0, need="majority", z=numbers["z"]),
    ]


def run(out_dir, quick=False, seed=0, seeds=None, threads=1, progress=None, executor="local",
        **overrides):  # fmt: skip
    return runner.execute(
        NAME, measure, claims, None, Config(), QUICK, out_dir, quick=quick, seed=seed,
        seeds=seeds, threads=threads, progress=progress, overrides=overrides,
        options={"executor": executor},
    )  # fmt: skip
