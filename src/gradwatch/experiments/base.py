"""What every experiment shares: claims, result.json, figures, progress, seeding, grids.

An experiment is one linear script (``gradwatch/experiments/<name>.py``) with

- a ``@dataclass`` config (and a ``quick`` variant of it),
- ``measure(cfg, out, seed, bar) -> numbers`` that trains and measures, writing run
  directories (``gw.watch``) under ``out`` and returning the measured numbers,
- ``claims(numbers) -> list[Claim]``, a *pure* function from the measured numbers to the
  paper's claims, so that a test can feed it a doctored record and watch a claim fail,
- ``plot(out, seed_runs, cfg) -> paths`` that draws the figures from every seed's numbers
  and run directories (the median over seeds, with the range: :func:`seeds.band`),
- ``run = runner(__name__)``: the ``run(out_dir, quick=False, seed=0, seeds=None,
  threads=1, **kw) -> dict`` that hands the four to :mod:`gradwatch.experiments.runner`,
  the runner every experiment shares (config, one ``measure`` per seed under
  :func:`seeded`, progress bar, claims judged over the seeds, figures, ``result.json``).

Claims are never asserted by hand: each one's ``holds`` is computed from one seed's
``numbers``, its ``evidence`` holds the numbers it was computed from, and its ``need``
says in how many seeds it must hold (:mod:`gradwatch.experiments.seeds`).
"""

from __future__ import annotations

import contextlib
import json
import platform
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

import numpy as np
import torch

from gradwatch.errors import GradwatchValueError
from gradwatch.experiments.seeds import NEEDS
from gradwatch.jsonable import jsonable

RESULT = "result.json"
FIGURES = "figures"
RUNS = "runs"


class Claim(TypedDict):
    """One claim of a paper, checked against the measured numbers.

    Keys:
        claim: the claim in one plain sentence, with its threshold.
        holds: whether the measured numbers support it.
        evidence: the numbers it was computed from (and the threshold).
        scale: "any" (default when absent): expected at every scale, so the experiment fails
            when it does not hold; "full": the effect needs the full-size run, so in quick
            mode it is computed and reported but does not decide the outcome.
        need: over several seeds, "all" (default when absent): it must hold in every seed;
            "majority": in more than half of them (see :mod:`gradwatch.experiments.seeds`).
    """

    claim: str
    holds: bool
    evidence: dict[str, Any]
    scale: NotRequired[Literal["any", "full"]]
    need: NotRequired[Literal["all", "majority"]]


def claim(
    text: str,
    holds: Any,
    scale: Literal["any", "full"] = "any",
    need: Literal["all", "majority"] = "all",
    **evidence: Any,
) -> Claim:
    """Build a :class:`Claim`; ``holds`` is coerced to a plain bool (NaN counts as False).

    Args:
        text: the claim, one sentence naming its threshold.
        holds: the computed truth value in one seed (a bool, or numpy bool).
        scale: "any" or "full" (see :class:`Claim`).
        need: "all" or "majority": in how many seeds it must hold (see :class:`Claim`).
        **evidence: the numbers behind it.

    Returns:
        the claim dict.
    """
    if scale not in ("any", "full"):
        raise GradwatchValueError(f'scale must be "any" or "full", got {scale!r}')
    if need not in NEEDS:
        raise GradwatchValueError(f'need must be "all" or "majority", got {need!r}')
    return Claim(
        claim=text, holds=bool(holds), evidence=jsonable(evidence), scale=scale, need=need
    )


def decisive(claims: Sequence[Claim], quick: bool) -> list[Claim]:
    """The claims that decide the outcome: all of them, less full-scale ones in quick mode."""
    return [c for c in claims if not (quick and c.get("scale", "any") == "full")]


NOT_RUN = "not run in quick mode"


def status(c: Claim, quick: bool) -> str:
    """The status of a claim: holds, fails, or :data:`NOT_RUN` (full-scale, quick run)."""
    if quick and c.get("scale", "any") == "full":
        return NOT_RUN
    return "holds" if c["holds"] else "fails"


def outcome(result: dict[str, Any]) -> bool:
    """True when every decisive claim of a result holds."""
    return all(c["holds"] for c in decisive(result["claims"], bool(result.get("quick"))))


def versions() -> dict[str, str]:
    """Versions of Python, torch, numpy and gradwatch, for result.json."""
    from gradwatch.version import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "gradwatch": __version__,
        "platform": platform.platform(terse=True),
    }


def finish(
    out_dir: str | Path,
    name: str,
    config: Any,
    *,
    quick: bool,
    seed: int,
    numbers: dict[str, Any],
    claims: list[Claim],
    started: float,
    figures: Sequence[str | Path] = (),
    threads: int | None = None,
    cpu_s: float | None = None,
) -> dict[str, Any]:
    """Write one seed's ``out_dir/result.json`` and return the result dict.

    Args:
        out_dir: the experiment's output folder.
        name: the experiment's name.
        config: its dataclass config.
        quick: whether this was the quick run.
        seed: the seed.
        numbers: the measured numbers the claims were computed from.
        claims: ``claims(numbers)``.
        started: ``time.perf_counter()`` when the experiment started.
        figures: paths of the figures written.
        threads: the torch intra-op threads it ran with (None: not recorded).
        cpu_s: the CPU time it took (None: not recorded).

    Returns:
        {name, config, quick, seed, threads, numbers, claims, runtime_s, cpu_s, versions,
        out_dir, figures}.
    """
    out = Path(out_dir)
    result = {
        "name": name,
        "config": jsonable(config),
        "quick": bool(quick),
        "seed": int(seed),
        "threads": threads,
        "numbers": jsonable(numbers),
        "claims": [jsonable({**c, "status": status(c, quick)}) for c in claims],
        "runtime_s": round(time.perf_counter() - started, 2),
        "cpu_s": None if cpu_s is None else round(cpu_s, 2),
        "versions": versions(),
        "out_dir": str(out),
        "figures": [str(Path(f)) for f in figures],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT).write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", "utf-8")
    return result


def load_result(out_dir: str | Path) -> dict[str, Any]:
    """Read ``out_dir/result.json``."""
    return json.loads((Path(out_dir) / RESULT).read_text(encoding="utf-8"))


# -- figures ------------------------------------------------------------------------------


def new_figure(
    nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.4, 4.0), **subplots: Any
):
    """A matplotlib Figure and its axes, drawn with Agg (no pyplot, no display needed).

    Args:
        nrows: rows of axes.
        ncols: columns of axes.
        size: figure size in inches.
        **subplots: passed to ``Figure.subplots`` (``squeeze``, ``sharex``, ...).

    Returns:
        (fig, axes) as ``Figure.subplots`` returns them.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(nrows, ncols, **subplots)


def save_figure(fig: Any, out_dir: str | Path, stem: str, dpi: int = 90) -> list[Path]:
    """Save ``fig`` as ``out_dir/figures/<stem>.png`` and ``.svg``.

    Returns:
        the two paths.
    """
    folder = Path(out_dir) / FIGURES
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.png", folder / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=dpi)
    fig.savefig(paths[1], metadata={"Date": None})  # no date: repeatable files
    return paths


# -- progress -----------------------------------------------------------------------------


class _Progress:
    """What :func:`progress` yields: ``advance(n)`` and ``note(text)``."""

    def __init__(self, bar: Any, task: Any):
        self._bar, self._task = bar, task

    def advance(self, n: float = 1) -> None:
        """Move the bar ``n`` units forward."""
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def total(self, n: float) -> None:
        """Set the units of work (when known only after the bar was opened)."""
        if self._bar is not None:
            self._bar.update(self._task, total=n)

    def note(self, text: str) -> None:
        """Show ``text`` beside the bar (what is running now)."""
        if self._bar is not None:
            self._bar.update(self._task, description=text)


@contextlib.contextmanager
def progress(total: float, description: str, disable: bool | None = None) -> Iterator[_Progress]:
    """A rich progress bar on stderr, off when stderr is not a terminal or when asked.

    Args:
        total: units of work (e.g. training steps over all runs).
        description: the text beside the bar.
        disable: True to switch it off, False to force it on, None for "when on a terminal".

    Yields:
        an object with ``advance(n=1)`` and ``note(text)``.
    """
    if disable is None:
        disable = not sys.stderr.isatty()
    if disable:
        yield _Progress(None, None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield _Progress(bar, task)


# -- the runner (gradwatch.experiments.runner) -------------------------------------------


def execute(*args: Any, **kw: Any) -> dict[str, Any]:
    """:func:`gradwatch.experiments.runner.execute`: run an experiment over its seeds."""
    from gradwatch.experiments.runner import execute as run_all

    return run_all(*args, **kw)


def runner(module: str) -> Callable[..., dict[str, Any]]:
    """:func:`gradwatch.experiments.runner.runner`: the ``run`` of an experiment module."""
    from gradwatch.experiments.runner import runner as make

    return make(module)


# -- seeding ------------------------------------------------------------------------------


@contextlib.contextmanager
def seeded(seed: int, threads: int | None = 1) -> Iterator[None]:
    """Seed Python, NumPy and torch and ask for deterministic algorithms, for a block.

    Also limits torch to ``threads`` intra-op threads (None leaves it alone): the
    experiments' models are small, with small batches, where extra threads buy nothing,
    and on a busy machine they spin against each other (measured here: 6 ms per step on
    one thread, 220 ms on two while other processes held the cores). The deterministic
    flag and the thread count are put back as they were when the block ends.

    Args:
        seed: seed for ``random``, ``numpy.random`` and ``torch``.
        threads: torch intra-op threads inside the block; None to leave it.
    """
    was = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    was_threads = torch.get_num_threads()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=was_warn)
        torch.set_num_threads(was_threads)


# -- grids --------------------------------------------------------------------------------

EXECUTORS = ("local", "ray")


def run_grid(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    executor: str = "local",
    processes: int = 1,
) -> list[Any]:
    """Apply ``fn`` to every item of a grid, in order, and return the results in order.

    Args:
        fn: a module-level function (it is pickled for a process pool or Ray).
        items: the grid points (picklable).
        executor: "local" (in this process, or a local process pool with ``processes > 1``)
            or "ray" (``ray.remote`` tasks on the cluster ``ray.init()`` connects to).
        processes: worker processes for "local"; 1 runs in this process.

    Returns:
        ``[fn(item) for item in items]``.

    Raises:
        GradwatchValueError: unknown executor, or "ray" without Ray installed.
    """
    items = list(items)
    if executor not in EXECUTORS:
        raise GradwatchValueError(
            f"executor must be one of {', '.join(EXECUTORS)}; got {executor!r}"
        )
    if executor == "ray":
        try:
            import ray
        except ImportError:
            raise GradwatchValueError(
                "executor 'ray' needs Ray: pip install 'ray[default]', or use --executor local"
            ) from None
        if not ray.is_initialized():
            ray.init(ignore_reinit_error=True, log_to_driver=False)
        remote = ray.remote(fn)
        return list(ray.get([remote.remote(it) for it in items]))
    if processes <= 1 or len(items) <= 1:
        return [fn(it) for it in items]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(processes, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(fn, items))


# -- reading run directories ----------------------------------------------------------------


def layer_profile(run: Any, stat: str, steps: Sequence[int] | None = None) -> dict[str, float]:
    """Mean of one statistic per layer over some recorded steps, input side first.

    Args:
        run: a :class:`gradwatch.Run` (from ``gw.load``) or a run directory.
        stat: a statistic name, e.g. "backprop_norm".
        steps: the steps to average over; None for all recorded steps.

    Returns:
        layer name -> mean value (layers without the statistic are left out).
    """
    from gradwatch.store.reader import load

    wide = load(run).pivot(stat)
    if steps is not None:
        wide = wide.loc[wide.index.isin(list(steps))]
    wide = wide.drop(columns=[c for c in wide.columns if c == ""])
    means = wide.mean(axis=0, skipna=True)
    return {str(k): float(v) for k, v in means.items() if v == v}


def geometric_mean(values: Iterable[float]) -> float:
    """Geometric mean of positive values (NaN when there is none)."""
    arr = np.asarray([v for v in values if v is not None and v > 0], dtype=np.float64)
    return float(np.exp(np.log(arr).mean())) if arr.size else float("nan")


def stopwatch() -> float:
    """``time.perf_counter()``, the ``started`` that :func:`finish` expects."""
    return time.perf_counter()


open_progress = progress  # :func:`execute` has a parameter named ``progress``
