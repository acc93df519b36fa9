"""The runner every experiment shares: seeds, threads, claims over seeds, result.json.

An experiment module provides ``NAME``, ``Config``, ``QUICK``, ``measure``, ``claims`` and
``plot`` (see :mod:`gradwatch.experiments.base`); ``run = runner(__name__)`` gives it its
``run``. One run of an experiment is

- one ``measure`` per seed (``seed``, ``seed + 1``, …; 3 seeds in full mode unless asked
  otherwise, 1 in quick mode), each under :func:`gradwatch.experiments.base.seeded` with
  torch limited to ``threads`` intra-op threads, each into its own folder
  ``out/seed-<s>/`` (its ``runs/`` and its own ``result.json``: that seed's numbers and
  claims, wall and CPU time);
- the claims judged over the seeds (:func:`gradwatch.experiments.seeds.over_seeds`);
- ``plot(out, seed_runs, cfg)``: figures that show the spread over the seeds;
- ``out/result.json``: the seeds, the thread count, each seed's numbers and verdicts,
  the claims over seeds, wall and CPU time.

:func:`gather` rebuilds ``out/result.json`` from seed folders that were run separately
(one process per seed, say), with the claims as the code states them now.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from gradwatch.errors import GradwatchValueError
from gradwatch.experiments import base
from gradwatch.experiments.seeds import (
    FULL_SEEDS,
    QUICK_SEEDS,
    SeedRun,
    claims_over_seeds,
    seed_dir,
    seed_list,
)
from gradwatch.jsonable import from_jsonable, jsonable


def cpu_seconds() -> float:
    """CPU time (user + system) of this process, all its threads, and its reaped children.

    Worker processes count once they have ended (a process pool, when it closes); a Ray
    cluster's workers do not. Where ``resource`` is missing (Windows): this process only.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return time.process_time()
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def check_threads(threads: Any) -> int:
    """``threads`` must be a positive integer (torch intra-op threads)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise GradwatchValueError(f"threads must be a positive integer, got {threads!r}")
    return threads


class _SeedBar:
    """The progress bar as one seed's ``measure`` sees it: its share of the whole bar."""

    def __init__(self, bar: Any, index: int, count: int, seed: int):
        self._bar, self._index, self._count, self._seed = bar, index, count, seed

    def total(self, n: float) -> None:
        if self._index == 0:
            self._bar.total(n * self._count)

    def advance(self, n: float = 1) -> None:
        self._bar.advance(n)

    def note(self, text: str) -> None:
        if self._count > 1:
            text += f" (seed {self._seed}, {self._index + 1} of {self._count})"
        self._bar.note(text)


def run_seed(
    name: str,
    measure: Callable[..., dict[str, Any]],
    claims: Callable[[dict[str, Any]], list],
    cfg: Any,
    out: Path,
    seed: int,
    *,
    quick: bool,
    threads: int,
    bar: Any,
    options: dict[str, Any] | None = None,
    seed_torch: bool = True,
) -> dict[str, Any]:
    """Measure one seed into ``out`` and write its ``result.json``; returns that result.

    Args:
        name: the experiment's name.
        measure: ``measure(cfg, out, seed, bar, **options) -> numbers``.
        claims: the experiment's pure claims function.
        cfg: the config.
        out: the seed's folder.
        seed: the seed.
        quick: whether this is the quick version.
        threads: torch intra-op threads while measuring.
        bar: the progress bar (``total``, ``advance``, ``note``).
        options: extra keyword arguments of ``measure``.
        seed_torch: False for experiments that seed (and set the threads of) each unit of
            work themselves.
    """
    started, cpu = base.stopwatch(), cpu_seconds()
    seeding = base.seeded(seed, threads) if seed_torch else contextlib.nullcontext()
    with seeding:
        numbers = measure(cfg, out, seed, bar, **(options or {}))
    return base.finish(
        out,
        name,
        cfg,
        quick=quick,
        seed=seed,
        numbers=numbers,
        claims=claims(numbers),
        started=started,
        threads=threads,
        cpu_s=cpu_seconds() - cpu,
    )


def execute(
    name: str,
    measure: Callable[..., dict[str, Any]],
    claims: Callable[[dict[str, Any]], list],
    plot: Callable[[Path, list[SeedRun], Any], Sequence[str | Path]] | None,
    config: Any,
    quick_config: Any,
    out_dir: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    seeds: int | None = None,
    threads: int = 1,
    progress: bool | None = None,
    overrides: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    seed_torch: bool = True,
) -> dict[str, Any]:
    """Run one experiment over its seeds: the steps every experiment shares, written once.

    Args:
        name: the experiment's name.
        measure: trains and measures one seed; returns its numbers.
        claims: the experiment's pure claims function (of one seed's numbers).
        plot: ``plot(out, seed_runs, cfg) -> paths``: the figures over the seeds (None: none).
        config: the full-size dataclass config.
        quick_config: the quick one.
        out_dir: the output folder.
        quick: run the quick version.
        seed: the first seed.
        seeds: how many seeds (``seed``, ``seed + 1``, …); None: 3 in full mode, 1 in quick.
        threads: torch intra-op threads (``torch.set_num_threads``) while measuring.
        progress: show a progress bar (None: when stderr is a terminal).
        overrides: fields of the config to change.
        options: extra keyword arguments of ``measure`` (e.g. ``executor``).
        seed_torch: False for experiments that seed each unit of work themselves (a grid
            run in worker processes); they get ``threads`` through ``options``.

    Returns:
        the result dict (see :func:`combine`), also in ``out_dir/result.json``.

    Raises:
        GradwatchValueError: ``seeds`` or ``threads`` not a positive integer.
    """
    cfg = replace(quick_config if quick else config, **(overrides or {}))
    count = (QUICK_SEEDS if quick else FULL_SEEDS) if seeds is None else seeds
    ids = seed_list(seed, count)
    check_threads(threads)
    out = Path(out_dir)
    started, cpu = base.stopwatch(), cpu_seconds()
    results = []
    with base.open_progress(0, name, disable=progress is False) as bar:
        for i, s in enumerate(ids):
            results.append(
                run_seed(
                    name, measure, claims, cfg, out / seed_dir(s), s, quick=quick,
                    threads=threads, bar=_SeedBar(bar, i, len(ids), s), options=options,
                    seed_torch=seed_torch,
                )  # fmt: skip
            )
    return combine(
        out, name, cfg, results, claims, plot, quick=quick, threads=threads,
        runtime_s=base.stopwatch() - started, cpu_s=cpu_seconds() - cpu,
    )  # fmt: skip


def combine(
    out: Path,
    name: str,
    config: Any,
    results: Sequence[dict[str, Any]],
    claims: Callable[[dict[str, Any]], list],
    plot: Callable[[Path, list[SeedRun], Any], Sequence[str | Path]] | None,
    *,
    quick: bool,
    threads: int,
    runtime_s: float,
    cpu_s: float,
) -> dict[str, Any]:
    """Judge the claims over the seeds' results, draw the figures, write ``out/result.json``.

    Returns:
        {name, config, quick, seeds, threads, claims (over seeds, each with its status),
        per_seed (seed, out_dir, runtime_s, cpu_s, threads, each claim's verdict in that
        seed, numbers), runtime_s, cpu_s (all seeds, the figures included), versions,
        out_dir, figures}.
    """
    seeds = [int(r["seed"]) for r in results]
    numbers = [r["numbers"] for r in results]
    runs = [
        SeedRun(s, Path(r["out_dir"]), from_jsonable(n))
        for s, r, n in zip(seeds, results, numbers, strict=True)
    ]
    plot_started, plot_cpu = base.stopwatch(), cpu_seconds()
    figures = list(plot(out, runs, config)) if plot is not None else []
    runtime_s += base.stopwatch() - plot_started
    cpu_s += cpu_seconds() - plot_cpu
    judged = claims_over_seeds(claims, numbers, seeds)
    result = {
        "name": name,
        "config": jsonable(config),
        "quick": bool(quick),
        "seeds": seeds,
        "threads": int(threads),
        "claims": [jsonable({**c, "status": base.status(c, quick)}) for c in judged],
        "per_seed": [
            {
                "seed": s,
                "out_dir": str(r["out_dir"]),
                "runtime_s": r.get("runtime_s"),
                "cpu_s": r.get("cpu_s"),
                "threads": r.get("threads", threads),
                "claims": [{"claim": c["claim"], "holds": c["holds"]} for c in r["claims"]],
                "numbers": r["numbers"],
            }
            for s, r in zip(seeds, results, strict=True)
        ],
        "runtime_s": round(runtime_s, 2),
        "cpu_s": round(cpu_s, 2),
        "versions": base.versions(),
        "out_dir": str(out),
        "figures": [str(Path(f)) for f in figures],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / base.RESULT).write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", "utf-8")
    return result


def gather(module: Any, out_dir: str | Path, plot: bool = True) -> dict[str, Any]:
    """Rebuild ``out_dir/result.json`` from the seed folders under it (run separately).

    The claims are judged with the module's ``claims`` as they are now, so a record can be
    re-judged after a claim was restated, without training again.

    Args:
        module: the experiment's module (``NAME``, ``claims``, ``plot``, ``Config``, ``QUICK``).
        out_dir: the experiment's output folder, holding ``seed-<s>/result.json``.
        plot: draw the figures over the seeds (they read the seeds' ``runs/``).

    Raises:
        GradwatchValueError: no seed folder, seeds of different modes, thread counts or
            configs, or results of another experiment.
    """
    out = Path(out_dir)
    results = sorted(
        (base.load_result(p.parent) for p in out.glob("seed-*/" + base.RESULT)),
        key=lambda r: r["seed"],
    )
    if not results:
        raise GradwatchValueError(f"no seed-*/{base.RESULT} under {str(out)!r}")
    for what in ("name", "quick", "threads", "config"):
        if len({json.dumps(r.get(what), sort_keys=True) for r in results}) != 1:
            raise GradwatchValueError(f"the seeds under {str(out)!r} differ in {what!r}")
    if results[0]["name"] != module.NAME:
        raise GradwatchValueError(f"{str(out)!r} holds {results[0]['name']!r}, not {module.NAME!r}")
    quick = bool(results[0]["quick"])
    cfg = _config_from(module.QUICK if quick else module.Config(), results[0]["config"])
    draw = getattr(module, "plot", None) if plot else None
    return combine(
        out, module.NAME, cfg, results, module.claims, draw, quick=quick,
        threads=int(results[0].get("threads") or 1),
        runtime_s=sum(r["runtime_s"] for r in results),
        cpu_s=sum(r.get("cpu_s") or 0.0 for r in results),
    )  # fmt: skip


def _config_from(cfg: Any, stored: dict[str, Any]) -> Any:
    """``cfg`` with the fields stored in a result.json (tuples made tuples again)."""
    from dataclasses import fields

    def tup(v: Any) -> Any:
        return tuple(tup(x) for x in v) if isinstance(v, list) else v

    known = {f.name for f in fields(cfg)}
    return replace(cfg, **{k: tup(v) for k, v in stored.items() if k in known})


def runner(module: str) -> Callable[..., dict[str, Any]]:
    """The ``run`` function of the experiment module named ``module`` (one definition for all).

    The module provides ``NAME``, ``measure``, ``claims``, ``plot``, ``Config`` and ``QUICK``;
    they are looked up when ``run`` is called, so ``run`` can be made before they are defined.
    """

    def run(
        out_dir: str | Path,
        quick: bool = False,
        seed: int = 0,
        seeds: int | None = None,
        threads: int = 1,
        progress: bool | None = None,
        **overrides: Any,
    ) -> dict:
        """Run the experiment; write seed-<s>/ (runs/, result.json), figures/ and result.json.

        Args:
            out_dir: output folder.
            quick: the small version (the module's ``QUICK`` config).
            seed: the first seed (of initialisation, data and batch order).
            seeds: how many seeds: ``seed``, ``seed + 1``, …; None: 3 in full mode, 1 in
                quick mode.
            threads: torch intra-op threads while training.
            progress: show a progress bar (None: when on a terminal).
            **overrides: fields of the module's ``Config`` to change.

        Returns:
            the result dict (see :func:`gradwatch.experiments.runner.combine`).
        """
        mod = sys.modules[module]
        return execute(
            mod.NAME, mod.measure, mod.claims, mod.plot, mod.Config(), mod.QUICK, out_dir,
            quick=quick, seed=seed, seeds=seeds, threads=threads, progress=progress,
            overrides=overrides,
        )  # fmt: skip

    run.__module__ = module
    return run


def record(result: dict[str, Any]) -> dict[str, Any]:
    """A result without its paths and per-claim evidence: what a stored record keeps.

    The claims are kept as verdicts only (sentence, holds, held_in, need): the numbers of
    every seed are kept, and the claims are a pure function of them.
    """
    return {
        **{k: result[k] for k in ("name", "config", "quick", "seeds", "threads")},
        "claims": [
            {k: c.get(k) for k in ("claim", "holds", "held_in", "need", "scale")}
            for c in result["claims"]
        ],
        "per_seed": [
            {k: s.get(k) for k in ("seed", "threads", "runtime_s", "cpu_s", "numbers")}
            for s in result["per_seed"]
        ],
        **{k: result.get(k) for k in ("runtime_s", "cpu_s", "versions")},
    }
