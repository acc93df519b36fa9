"""Schoenholz et al. (2017): deep tanh networks train only within about 6 ξ_c of criticality.

Paper: S. S. Schoenholz, J. Gilmer, S. Ganguli and J. Sohl-Dickstein, "Deep Information
Propagation", ICLR 2017 (building on Poole et al. 2016, "Exponential expressivity in deep
neural networks through transient chaos").

Setup: fully connected tanh networks of ``depth`` hidden layers of equal width, every weight
W ~ N(0, σw²/fan_in) and every bias b ~ N(0, σb²), σb² = 0.05, over a grid of σw² (ordered
phase below the critical σw² ≈ 1.76, chaotic above) × depth. Each grid point is trained
briefly with plain SGD on the 8×8 digits bundled with scikit-learn (the paper: MNIST and
CIFAR-10, much longer training) and scored by its test accuracy. The learning rate is
``lr_scale / depth`` (capped at ``lr_max``): at criticality every layer's gradient is of the
same size, so the step a fixed learning rate takes grows with depth; scaling it by 1/depth
keeps the deep critical networks stable without favouring any σw². Quick mode: σw² ∈
{0.5, 1, 1.76, 3, 4} × depth ∈ {5, 20, 60}, width 128, 150 steps; full mode: 11 σw² from 0.5
to 4 × 8 depths from 5 to 100, 400 steps.

What the paper found, and what this script measures and checks:

1. Mean-field theory gives a depth scale ξ_c (from :func:`gradwatch.theory.depth_scales`)
   over which two inputs' correlation relaxes to its fixed point; it diverges at the
   critical σw² (χ1 = 1). A network trains iff its depth L ≲ 6 ξ_c (their Figure 6: the
   accuracy heat map over (σw², L) with the 6 ξ_c curve on top).
   Claims ("trained": test accuracy ≥ :data:`TRAINED_ACCURACY`): at the largest depth, the
   near-critical σw² trains while the far-ordered (smallest) and far-chaotic (largest) σw²
   do not, in most seeds (there the critical net is still learning when the short training
   stops, and whether it passes the threshold varies with the seed: 0.45-0.75 over seeds
   0-2); the trainable depth peaks at criticality, in every seed: no σw² trains deeper than
   the near-critical one, which trains ≥ :data:`DEEPER_FACTOR` × deeper than the far ends;
   and "trained" agrees with "L ≤ 6 ξ_c" on at least :data:`AGREE_AT_LEAST` of the grid
   points.
2. The back-propagated gradient at initialisation changes by √χ1 per layer toward the input
   (E[δ_l²] = χ1 E[δ_{l+1}²]): it vanishes in the ordered phase and explodes in the chaotic
   one. Measured: the per-layer log-slope of ``backprop_norm`` at step 0 of each run
   (recorded by ``gw.watch``), against the predicted ½ ln χ1 per layer toward the input.
Not a claim of the paper, but a property of the lab, tested in
``tests/experiments/test_criticality.py`` rather than claimed here: the grid is a set of
independent trainings, run on a local process pool (``executor="local"``) or on Ray
(``executor="ray"``); each job is seeded by its grid point, so the numbers do not depend
on where or in what order the jobs ran.

How to read the figure (``figures/phase_diagram``): left, test accuracy over σw² (x) and
depth (y, log scale), bright = trained; the white curve is the predicted trainable depth
6 ξ_c, the dashed line the critical σw². Cells under the curve should be bright, cells above
it dark. Right, the measured per-layer growth of the back-propagated gradient toward the
input at initialisation (dots, one per grid point) against the mean-field ½ ln χ1 (line):
below 0 gradients vanish (ordered), above 0 they explode (chaotic).

Run: ``gradwatch experiment criticality [--quick] [--executor local|ray]``.
"""

from __future__ import annotations

import contextlib
import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gradwatch.experiments import base, runner
from gradwatch.experiments.base import Claim, claim
from gradwatch.experiments.criticality_figures import plot
from gradwatch.experiments.data import digits
from gradwatch.experiments.training import error_rate, mean_loss, train_classifier
from gradwatch.jsonable import from_jsonable

NAME = "criticality"
ACTIVATION = "tanh"


@dataclass(frozen=True)
class Config:
    """Settings of the experiment (full mode); :data:`QUICK` is the quick one."""

    # σw² grid: ordered phase below ≈ 1.76 (the critical value for σb² = 0.05), chaotic above
    sigma_w2s: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.76, 2.0, 2.5, 3.0, 3.5, 4.0)
    depths: tuple[int, ...] = (5, 10, 20, 30, 45, 60, 80, 100)  # hidden layers
    sigma_b2: float = 0.05
    width: int = 128
    steps: int = 400
    lr_scale: float = 0.6  # learning rate = min(lr_max, lr_scale / depth)
    lr_max: float = 0.1
    batch_size: int = 64
    record_every: int = 10  # gw.watch records step 0 and every 10th step after it
    processes: int = 2  # workers of the local pool / CPUs of the local Ray instance


QUICK = Config(
    sigma_w2s=(0.5, 1.0, 1.76, 3.0, 4.0),
    depths=(5, 20, 60),
    steps=150,
    record_every=25,
)


@dataclass(frozen=True)
class Job:
    """One grid point: everything a worker needs (picklable)."""

    sigma_w2: float
    depth: int
    seed: int  # of the initialisation and the batch order: a function of the grid point
    data_seed: int  # of the train/test split: the same for the whole grid
    cfg: Config
    run_dir: str
    threads: int = 1  # torch intra-op threads of the job


def point_seed(seed: int, sigma_w2: float, depth: int) -> int:
    """The seed of one grid point: the same whatever the executor or the job order."""
    return zlib.crc32(f"{NAME}/{seed}/{sigma_w2:.6g}/{depth}".encode())


def build(depth: int, width: int, d_in: int, classes: int, sigma_w2: float, sigma_b2: float):
    """``depth`` × [Linear, Tanh], then Linear to ``classes``; W ~ N(0, σw²/n), b ~ N(0, σb²)."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else width, width), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(width, classes))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, math.sqrt(sigma_w2 / m.in_features))
                m.bias.normal_(0.0, math.sqrt(sigma_b2))
    return model


@lru_cache(maxsize=4)
def _data(seed: int) -> tuple[torch.Tensor, ...]:
    return (*digits("train", seed=seed), *digits("test", seed=seed))


def train_point(job: Job) -> dict[str, Any]:
    """Train one grid point and measure it; runs in a worker (pool or Ray) or in-process.

    ``job.threads`` torch threads (1 unless asked otherwise), so that jobs running side by
    side do not fight over cores and the arithmetic is the same wherever the job runs.

    Returns:
        {sigma_w2, depth, seed, lr, test_accuracy, train_loss, backprop_slope}:
        ``train_loss`` is the full training set's cross-entropy after training,
        ``backprop_slope`` the fitted d ln‖δ_l‖ / d(layers toward the input) at step 0.
    """
    from gradwatch.experiments import gw

    threads = torch.get_num_threads()
    try:
        cfg = job.cfg
        x, y, xt, yt = _data(job.data_seed)  # (1347, 64), (1347,), (450, 64), (450,)
        lr = min(cfg.lr_max, cfg.lr_scale / job.depth)
        with base.seeded(job.seed, threads=job.threads):
            model = build(job.depth, cfg.width, x.shape[1], 10, job.sigma_w2, cfg.sigma_b2)
            run_dir = train_classifier(
                model,
                x,
                y,
                steps=cfg.steps,
                lr=lr,
                batch_size=cfg.batch_size,
                run_dir=job.run_dir,
                seed=job.seed,
                every=cfg.record_every,
                config={"experiment": NAME, "sigma_w2": job.sigma_w2, "depth": job.depth},
            )
        # ‖∂loss/∂s_l‖ of the hidden layers at step 0 (before any update), input side first
        bp = gw.load(run_dir).pivot("backprop_norm").iloc[0].to_numpy(float)[: job.depth]
        return {
            "sigma_w2": job.sigma_w2,
            "depth": job.depth,
            "seed": job.seed,
            "lr": lr,
            "test_accuracy": 1.0 - error_rate(model, xt, yt),
            "train_loss": mean_loss(model, x, y),
            "backprop_slope": _slope_toward_input(bp),
        }
    finally:
        torch.set_num_threads(threads)


def _slope_toward_input(norms: np.ndarray) -> float:
    """Least-squares slope of ln‖δ_l‖ per layer, counted from the top layer toward the input."""
    ok = np.isfinite(norms) & (norms > 0)
    if ok.sum() < 2:
        return float("nan")
    steps_down = np.arange(len(norms))[::-1]  # 0 at the top hidden layer
    return float(-np.polyfit(-steps_down[ok], np.log(norms[ok]), 1)[0])


@contextlib.contextmanager
def _local_ray(executor: str, cpus: int) -> Iterator[None]:
    """Start a local Ray instance for the grid (and stop it after) unless one is running."""
    try:
        import ray
    except ImportError:  # base.run_grid raises the error that says what to install
        yield
        return
    # with RAY_ADDRESS set, base.run_grid's ray.init() joins that cluster instead
    started = executor == "ray" and not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    if started:
        ray.init(
            num_cpus=cpus, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False
        )
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def run(
    out_dir: str | Path,
    quick: bool = False,
    seed: int = 0,
    seeds: int | None = None,
    threads: int = 1,
    executor: str = "local",
    progress: bool | None = None,
    **overrides: Any,
) -> dict:
    """Run the experiment; write seed-<s>/ (runs/, result.json), figures/ and result.json.

    Args:
        out_dir: output folder.
        quick: the small version (:data:`QUICK`).
        seed: the first seed (of the data split; each grid point's seed is derived from it).
        seeds: how many seeds: ``seed``, ``seed + 1``, …; None: 3 in full mode, 1 in quick.
        threads: torch intra-op threads of each grid point's training.
        executor: "local" (a process pool of ``min(cpu_count, processes)`` workers) or
            "ray" (a local Ray instance with that many CPUs, started and stopped here,
            unless ``ray.init`` was already called).
        progress: show a progress bar (None: when on a terminal).
        **overrides: fields of :class:`Config` to change.

    Returns:
        the result dict (see :func:`gradwatch.experiments.runner.combine`).
    """
    return runner.execute(
        NAME,
        measure,
        claims,
        plot,
        Config(),
        QUICK,
        out_dir,
        quick=quick,
        seed=seed,
        seeds=seeds,
        threads=threads,
        progress=progress,
        overrides=overrides,
        options={"executor": executor, "threads": threads},
        seed_torch=False,  # every grid point seeds itself (point_seed), wherever it runs
    )


def measure(
    cfg: Config, out: Path, seed: int, bar: Any, executor: str = "local", threads: int = 1
) -> dict:
    """Train the grid; return the numbers the claims are computed from."""
    from gradwatch.experiments import gw

    processes = max(1, min(os.cpu_count() or 1, cfg.processes))

    # -- theory: the predicted trainable depth of every σw² ---------------------------------
    sw2 = np.asarray(cfg.sigma_w2s, dtype=float)
    xi_q, xi_c, xi_grad = gw.theory.depth_scales(ACTIVATION, sw2, cfg.sigma_b2)
    chi1 = gw.theory.chi1(ACTIVATION, sw2, cfg.sigma_b2)
    critical = float(gw.theory.critical_sigma_w2(ACTIVATION, cfg.sigma_b2))

    # -- the grid: one independent training per (σw², depth) -------------------------------
    jobs = [
        Job(
            s, d, point_seed(seed, s, d), seed, cfg, str(out / base.RUNS / f"sw{s:g}-L{d}"),
            threads,
        )  # fmt: skip
        for s in cfg.sigma_w2s
        for d in cfg.depths
    ]
    bar.total(len(jobs))
    bar.note(f"{NAME}: {len(jobs)} trainings on {executor} ({processes} workers)")
    with _local_ray(executor, processes):
        grid = base.run_grid(train_point, jobs, executor=executor, processes=processes)
    bar.advance(len(jobs))

    by_point = {(g["sigma_w2"], g["depth"]): g for g in grid}
    return {
        "activation": ACTIVATION,
        "sigma_b2": cfg.sigma_b2,
        "sigma_w2s": list(cfg.sigma_w2s),
        "depths": list(cfg.depths),
        "critical_sigma_w2": critical,
        "theory": {
            "chi1": chi1,
            "xi_q": xi_q,
            "xi_c": xi_c,
            "xi_grad": xi_grad,
            "trainable_depth": gw.theory.trainable_depth(ACTIVATION, sw2, cfg.sigma_b2),
        },
        # accuracy[i][j]: σw² = sigma_w2s[i], depth = depths[j]
        "accuracy": [[by_point[s, d]["test_accuracy"] for d in cfg.depths] for s in cfg.sigma_w2s],
        "train_loss": [[by_point[s, d]["train_loss"] for d in cfg.depths] for s in cfg.sigma_w2s],
        "backprop_slope": [
            [by_point[s, d]["backprop_slope"] for d in cfg.depths] for s in cfg.sigma_w2s
        ],
        "grid": grid,
        "executor": executor,
        "processes": processes,
        "threads": threads,
    }


# Thresholds of the claims.
TRAINED_ACCURACY = 0.5  # "trained": test accuracy ≥ 5× chance (10 classes)
DEEPER_FACTOR = 2.0  # the near-critical σw²'s trainable depth vs the far ends' (largest)
AGREE_AT_LEAST = 0.8  # share of grid points where "trained" agrees with "L ≤ 6 ξ_c"
SLOPE_TOL = 0.05  # measured ln‖δ‖ slope per layer vs ½ ln χ1
SLOPE_MIN_DEPTH = 20  # fit the slope over at least this many layers


def claims(numbers: dict[str, Any]) -> list[Claim]:
    """The paper's claims, computed from the measured numbers (pure: no side effects).

    Args:
        numbers: ``result["numbers"]``: the σw² and depth grids, the theory per σw², the
            accuracy (and loss, gradient slope) per grid point, and the re-checked points.

    Returns:
        the claims, each with its evidence.
    """
    numbers = from_jsonable(numbers)  # a record's "nan", "inf", "-inf" as floats
    sw2 = np.asarray(numbers["sigma_w2s"], dtype=float)
    depths = np.asarray(numbers["depths"], dtype=float)
    acc = np.asarray(numbers["accuracy"], dtype=float)  # (σw², depth); NaN where missing
    limit = np.asarray(numbers["theory"]["trainable_depth"], dtype=float)  # 6 ξ_c per σw²
    limit = np.where(np.isnan(limit), np.inf, limit)  # inf at criticality (null in old records)
    chi1 = np.asarray(numbers["theory"]["chi1"], dtype=float)
    out: list[Claim] = []

    # 1. at the largest depth only the near-critical σw² trains
    crit = int(np.argmin(np.abs(np.log(chi1))))  # the σw² with χ1 closest to 1
    ordered, chaotic = int(np.argmin(sw2)), int(np.argmax(sw2))
    last = acc[:, -1]
    deepest = [_deepest(depths, acc[i] >= TRAINED_ACCURACY) for i in range(len(sw2))]
    deepest_trained = {f"{s:g}": d for s, d in zip(sw2, deepest, strict=True)}
    out.append(
        claim(
            f"At the largest depth ({depths[-1]:g} layers) the near-critical σw² "
            f"({sw2[crit]:g}, χ1 = {chi1[crit]:.3f}) trains (test accuracy ≥ "
            f"{TRAINED_ACCURACY}) while the far-ordered ({sw2[ordered]:g}) and far-chaotic "
            f"({sw2[chaotic]:g}) ones do not",
            crit not in (ordered, chaotic)
            and last[crit] >= TRAINED_ACCURACY
            and last[ordered] < TRAINED_ACCURACY
            and last[chaotic] < TRAINED_ACCURACY,
            # at the largest depth the critical net is still learning after the short
            # training: whether it passes the threshold there varies with the seed
            need="majority",
            depth=depths[-1],
            accuracy={f"{sw2[i]:g}": last[i] for i in (ordered, crit, chaotic)},
            deepest_trained=deepest_trained,
            threshold=TRAINED_ACCURACY,
        )
    )

    # 1b. the trainable depth peaks at criticality
    reach = [0.0 if d is None else d for d in deepest]
    out.append(
        claim(
            f"The trainable depth peaks at criticality: no σw² trains (test accuracy ≥ "
            f"{TRAINED_ACCURACY}) at a larger depth than the near-critical one "
            f"({sw2[crit]:g}), and it trains at ≥ {DEEPER_FACTOR:g}× the largest depth at "
            f"which the far-ordered ({sw2[ordered]:g}) or far-chaotic ({sw2[chaotic]:g}) "
            "one trains",
            crit not in (ordered, chaotic)
            and reach[crit] >= max(reach)
            and reach[crit] >= DEEPER_FACTOR * max(reach[ordered], reach[chaotic]),
            deepest_trained=deepest_trained,
            factor=DEEPER_FACTOR,
            threshold=TRAINED_ACCURACY,
        )
    )

    # 2. trainable iff L ≲ 6 ξ_c
    predicted = depths[None, :] <= limit[:, None]  # (σw², depth)
    trained = acc >= TRAINED_ACCURACY
    agree = predicted == trained
    share = float(agree.mean()) if agree.size else float("nan")
    out.append(
        claim(
            f"Networks train (test accuracy ≥ {TRAINED_ACCURACY}) where depth ≤ 6 ξ_c and do "
            f"not where depth > 6 ξ_c, on ≥ {AGREE_AT_LEAST:.0%} of the grid points",
            share >= AGREE_AT_LEAST,
            agreeing_share=share,
            threshold=AGREE_AT_LEAST,
            disagreeing=[
                {
                    "sigma_w2": sw2[i],
                    "depth": depths[j],
                    "accuracy": acc[i, j],
                    "six_xi_c": limit[i],
                }
                for i, j in zip(*np.nonzero(~agree), strict=True)
            ],
        )
    )

    # 3. gradients at initialisation vanish (ordered) or explode (chaotic) at rate ½ ln χ1
    slopes = np.asarray(numbers["backprop_slope"], dtype=float)  # (σw², depth)
    want = 0.5 * np.log(chi1)  # per layer toward the input: ln √χ1
    deep = depths >= SLOPE_MIN_DEPTH  # a slope over a few layers is mostly noise
    err = np.abs(slopes[:, deep] - want[:, None])
    out.append(
        claim(
            "At initialisation the back-propagated gradient changes by √χ1 per layer toward the "
            "input (vanishing when ordered, exploding when chaotic): its measured per-layer "
            f"log-slope is within {SLOPE_TOL} of ½ ln χ1 at every σw² (depth ≥ "
            f"{SLOPE_MIN_DEPTH})",
            err.size > 0 and bool(np.all(err <= SLOPE_TOL)),
            predicted_slope={f"{s:g}": w for s, w in zip(sw2, want, strict=True)},
            measured_slope={
                f"{s:g}": dict(zip([f"{d:g}" for d in depths], slopes[i], strict=True))
                for i, s in enumerate(sw2)
            },
            largest_error=float(np.nanmax(err)) if err.size else None,
            tolerance=SLOPE_TOL,
        )
    )

    return out


def _deepest(depths: np.ndarray, ok: np.ndarray) -> float | None:
    """The largest depth where ``ok`` holds (None when it holds nowhere)."""
    return float(depths[ok].max()) if ok.any() else None
