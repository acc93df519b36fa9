"""Claims over seeds: one experiment run with several seeds, judged as a whole.

A full training run is chaotic: the same code and seed on another machine (another BLAS
kernel, another thread count) rounds differently, and after a thousand steps of SGD the
trajectories part. A claim that holds on one seed of one machine is not a reproduction, so
every experiment runs over several seeds (``--seeds``, 3 by default in full mode) and each
claim is judged over them:

- each seed's numbers go through the experiment's own pure ``claims(numbers)``, as before;
- a claim states how many seeds it needs (``need`` in :func:`gradwatch.experiments.base.claim`):
  ``"all"`` (the default: in n of n seeds) or ``"majority"`` (in more than half of them;
  for one threshold on one figure that is the same as "the median over seeds passes");
- :func:`over_seeds` counts the seeds in which it held and compares with what it needs. The
  sentence says it: "… [in 3 of 3 seeds]" or "… [in ≥ 2 of 3 seeds]";
- :func:`spread` gives, for every number in a claim's evidence, its median, smallest and
  largest value over the seeds: the figures that a table or a plot shows with their range.

Everything here is pure: a test can feed it doctored per-seed numbers and watch a claim fail.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gradwatch.errors import GradwatchValueError
from gradwatch.jsonable import from_jsonable, jsonable

#: How many seeds a claim must hold in: every seed, or more than half of them.
NEEDS = ("all", "majority")

#: Seeds of a full run when ``seeds`` is not given, and of a quick run.
FULL_SEEDS = 3
QUICK_SEEDS = 1


class SeedRun(NamedTuple):
    """One seed of an experiment: its seed, its folder (``runs/`` is below it), its numbers."""

    seed: int
    out: Path
    numbers: dict[str, Any]


def seed_list(seed: int, seeds: int) -> list[int]:
    """The seeds of a run: ``seed``, ``seed + 1``, … (``seeds`` of them).

    Raises:
        GradwatchValueError: ``seeds`` below 1.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int | np.integer) or seeds < 1:
        raise GradwatchValueError(f"seeds must be a positive integer, got {seeds!r}")
    return [int(seed) + i for i in range(int(seeds))]


def seed_dir(seed: int) -> str:
    """The name of a seed's folder inside the experiment's output folder."""
    return f"seed-{seed}"


def needed(need: str, n: int) -> int:
    """How many of ``n`` seeds a claim with this ``need`` must hold in."""
    if need not in NEEDS:
        raise GradwatchValueError(f"need must be one of {', '.join(NEEDS)}; got {need!r}")
    return n if need == "all" else n // 2 + 1


def phrase(k: int, n: int) -> str:
    """"in 3 of 3 seeds", "in ≥ 2 of 3 seeds", "in 1 of 1 seed"."""
    return f"in {'' if k == n else '≥ '}{k} of {n} seed{'s' if n != 1 else ''}"


def over_seeds(per_seed: Sequence[Sequence[Mapping[str, Any]]], seeds: Sequence[int]) -> list:
    """Judge each claim over the seeds.

    Args:
        per_seed: ``claims(numbers)`` of each seed, in the order of ``seeds``; every seed
            lists the same claims in the same order.
        seeds: the seeds.

    Returns:
        one claim per claim of the experiment: ``claim`` (the sentence, with "[in k of n
        seeds]"), ``holds`` (held in at least ``need`` seeds), ``scale``, ``need`` (k),
        ``held_in`` (how many seeds it held in), ``seeds``, ``per_seed`` (each seed's
        ``holds``), ``evidence`` ({"spread": :func:`spread`, "per_seed": each seed's
        evidence, by seed}).

    Raises:
        GradwatchValueError: the seeds list different claims, or none was given.
    """
    if not per_seed or len(per_seed) != len(seeds):
        raise GradwatchValueError(
            f"give one list of claims per seed: {len(per_seed)} lists for {len(seeds)} seeds"
        )
    if len({len(cs) for cs in per_seed}) != 1:
        raise GradwatchValueError("every seed must list the same claims, in the same order")
    n = len(seeds)
    out = []
    for group in zip(*per_seed, strict=True):
        first = group[0]
        k = needed(first.get("need", "all"), n)
        held = [bool(c["holds"]) for c in group]
        out.append(
            {
                "claim": f"{first['claim']} [{phrase(k, n)}]",
                "holds": sum(held) >= k,
                "scale": first.get("scale", "any"),
                "need": k,
                "held_in": sum(held),
                "seeds": [int(s) for s in seeds],
                "per_seed": held,
                "evidence": {
                    "spread": spread([c["evidence"] for c in group]),
                    "per_seed": {str(s): c["evidence"] for s, c in zip(seeds, group, strict=True)},
                },
            }
        )
    return out


def claims_over_seeds(
    claims: Callable[[dict[str, Any]], list],
    numbers: Sequence[dict[str, Any]],
    seeds: Sequence[int],
) -> list:
    """:func:`over_seeds` of ``claims(numbers)`` for each seed's numbers (pure)."""
    return over_seeds([claims(n) for n in numbers], seeds)


def spread(evidence: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Median, smallest and largest value over the seeds of every number in the evidence.

    Nested dicts are walked (keys joined with "."); lists, strings and booleans are left
    out; a number missing or non-finite in some seed is summarised over the others and
    ``n`` says over how many.

    Returns:
        {"key.sub": {"median", "min", "max", "n"}}.
    """
    values: dict[str, list[float]] = {}
    for ev in evidence:
        for key, v in _leaves(from_jsonable(ev)):
            values.setdefault(key, []).append(v)
    out = {}
    for key, vs in values.items():
        finite = [v for v in vs if math.isfinite(v)]
        if finite:
            out[key] = {
                "median": float(np.median(finite)),
                "min": float(min(finite)),
                "max": float(max(finite)),
                "n": len(finite),
            }
    return jsonable(out)


def _leaves(tree: Any, prefix: str = "") -> list[tuple[str, float]]:
    if isinstance(tree, Mapping):
        return [leaf for k, v in tree.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    if isinstance(tree, bool) or not isinstance(tree, int | float | np.number):
        return []
    return [(prefix[:-1], float(tree))]


def band(ax: Any, x: Any, ys: Sequence[Any], color: str, label: str, **line: Any) -> None:
    """Draw the median over seeds as a line and the min–max range as a band behind it.

    Args:
        ax: a matplotlib Axes.
        x: the x values, shared by the seeds.
        ys: one sequence of y values per seed (same length as ``x``; NaN where missing).
        color: the colour of both.
        label: the legend label; "(median, min–max over n seeds)" is added when n > 1.
        **line: passed to ``ax.plot`` for the median line.
    """
    arr = np.asarray([np.asarray(y, dtype=float) for y in ys], dtype=float)
    x = np.asarray(x, dtype=float)
    n = arr.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column stays NaN
        mid = np.nanmedian(arr, axis=0)
        lo, hi = np.nanmin(arr, axis=0), np.nanmax(arr, axis=0)
    if n > 1:
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
        label = f"{label} (median, range of {n} seeds)"
    ax.plot(x, mid, color=color, label=label, **line)


def align(series: Sequence[tuple[Sequence[float], Sequence[float]]]) -> tuple[Any, list[Any]]:
    """Put (x, y) series of several seeds on the union of their x values (NaN where absent).

    Returns:
        (x, [y per seed]).
    """
    xs = sorted({float(v) for x, _ in series for v in x})
    index = {v: i for i, v in enumerate(xs)}
    ys = []
    for x, y in series:
        row = np.full(len(xs), np.nan)
        for xv, yv in zip(x, y, strict=True):
            row[index[float(xv)]] = np.nan if yv is None else float(yv)
        ys.append(row)
    return np.asarray(xs), ys


def bars(ax: Any, x: Any, values: Sequence[Sequence[float]], width: float, **bar: Any) -> None:
    """Bars at the median over seeds, with the min–max range as an error bar.

    Args:
        ax: a matplotlib Axes.
        x: the bars' positions.
        values: one sequence of values per seed (same length as ``x``; NaN where missing).
        width: the bars' width.
        **bar: passed to ``ax.bar`` (``color``, ``label``, …).
    """
    arr = np.asarray([np.asarray(v, dtype=float) for v in values], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mid = np.nanmedian(arr, axis=0)
        lo, hi = np.nanmin(arr, axis=0), np.nanmax(arr, axis=0)
    err = np.vstack([mid - lo, hi - mid]) if arr.shape[0] > 1 else None
    ax.bar(x, mid, width, yerr=err, capsize=2 if err is not None else 0, **bar)


def median_numbers(runs: Sequence[SeedRun], get: Callable[[dict[str, Any]], Any]) -> Any:
    """The median over seeds of ``get(numbers)`` (a number or an array of one shape)."""
    arr = np.asarray([np.asarray(get(r.numbers), dtype=float) for r in runs], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(arr, axis=0)
