"""What the report reads: a Run (from a path, a Run or a Checkup), and tables taken from it.

Everything in :mod:`gradwatch.report` goes through :func:`as_run`, so the terminal summary, the
figures, the HTML report and the TensorBoard export all read a run directory (or the in-memory
run of a Checkup), never a live Monitor.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.stats import ALL_STATS
from gradwatch.store.reader import Run, load

if TYPE_CHECKING:
    from gradwatch.check import Checkup
    from gradwatch.findings import Finding

RunLike = Run | str | Path


def as_run(run: Any) -> Run:
    """The :class:`Run` behind ``run``: a Run, a run directory path, or a Checkup (its ``.run``).

    Raises:
        GradwatchTypeError: ``run`` is none of those.
        RunDirectoryError: the path is not a readable run directory.
    """
    if isinstance(run, Run):
        return run
    if isinstance(run, str | Path):
        return load(run)
    inner = getattr(run, "run", None)
    if is_checkup(run) and isinstance(inner, Run):
        return inner
    raise GradwatchTypeError(
        f"run must be a gradwatch Run, a run directory path or a Checkup, got "
        f"{type(run).__name__}; pass gw.load('runs/a'), 'runs/a' or gw.check(model, x)"
    )


def check_stat(name: str, value: Any) -> str:
    """``value`` must be a statistic name (one of ``gradwatch.stats.ALL_STATS``)."""
    if not isinstance(value, str) or value not in ALL_STATS:
        raise GradwatchValueError(
            f"{name} must be a statistic name, one of {', '.join(ALL_STATS)}; got {value!r}"
        )
    return value


def check_steps(value: Any) -> list[int] | None:
    """``steps`` must be None or a list of step numbers (integers)."""
    if value is None:
        return None
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        raise GradwatchTypeError(
            f"steps must be a list of step numbers or None, got {type(value).__name__} "
            f"{value!r}; e.g. steps=[0, 100]"
        )
    items = list(value)
    for s in items:
        if isinstance(s, bool) or not isinstance(s, int | np.integer):
            raise GradwatchTypeError(
                f"steps must hold integers (step numbers), got {type(s).__name__} {s!r}"
            )
    return [int(s) for s in items]


def is_checkup(obj: Any) -> bool:
    """Whether ``obj`` is a :class:`~gradwatch.check.Checkup`."""
    try:
        from gradwatch.check import Checkup
    except ImportError:  # pragma: no cover - check.py is written by another team
        return False
    return isinstance(obj, Checkup)


def wide(run: Run, stat: str) -> pd.DataFrame:
    """One statistic as a wide table: index step, one column per layer, input side first.

    Unlike ``run.pivot``, steps and layers whose values are all NaN are kept (NaN cells), so a
    step where everything went non-finite still shows. No loss column. Empty (no rows, no
    columns) when the statistic was not recorded.
    """
    if stat not in ALL_STATS:
        return pd.DataFrame()
    rows = run.stats[(run.stats["stat"] == stat) & (run.stats["layer"] != "")]
    if rows.empty:
        return pd.DataFrame()
    table = rows.pivot_table(index="step", columns="layer", values="value", aggfunc="last",
                             dropna=False)
    present = set(rows["layer"].unique())
    cols = [ly for ly in run.layers if ly in present]
    cols += sorted(present - set(cols))
    steps = sorted(rows["step"].unique().tolist())
    return table.reindex(index=steps, columns=cols).astype("float64")


def nonfinite_layers(run: Run, stat: str, step: int) -> list[str]:
    """Layers whose ``stat`` was recorded as NaN or Inf at ``step`` (pivots drop NaN)."""
    s = run.stats
    rows = s[(s["stat"] == stat) & (s["step"] == step) & (s["layer"] != "")]
    return rows.loc[~np.isfinite(rows["value"].to_numpy(dtype=float)), "layer"].tolist()


def recorded(run: Run, stat: str) -> bool:
    """Whether ``run`` holds at least one value of ``stat``."""
    return bool((run.stats["stat"] == stat).any())


def pick_steps(available: list[int], steps: list[int] | None, default_n: int = 3) -> list[int]:
    """Steps to draw: first, middle and last of ``available`` by default.

    Requested steps that were not recorded are replaced by the nearest recorded step; the
    result is sorted and without duplicates.
    """
    if not available:
        return []
    if steps is None:
        idx = {0, (len(available) - 1) // 2, len(available) - 1} if default_n == 3 else set(
            np.linspace(0, len(available) - 1, default_n).round().astype(int).tolist()
        )
        return [available[i] for i in sorted(idx)]
    arr = np.asarray(available)
    chosen = {int(arr[np.abs(arr - int(s)).argmin()]) for s in steps}
    return sorted(chosen)


def last_values(run: Run) -> pd.DataFrame:
    """Each statistic at the last step it was recorded: one row per layer, input side first.

    Columns: ``layer`` then one column per recorded statistic (in :data:`ALL_STATS` order,
    without ``loss``). ``attrs["steps"]`` maps each statistic to its step and
    ``attrs["recorded"]`` to the layers that have a value there, so that a value recorded as
    NaN can be told from one that does not apply (both are NaN in the table).
    """
    df = run.stats[run.stats["layer"] != ""]
    out = pd.DataFrame({"layer": run.layers})
    steps: dict[str, int] = {}
    present: dict[str, set[str]] = {}
    for stat in ALL_STATS:
        sub = df[df["stat"] == stat]
        if sub.empty:
            continue
        last = int(sub["step"].max())
        at = sub[sub["step"] == last]
        values = dict(zip(at["layer"], at["value"].astype(float), strict=True))
        out[stat] = [values.get(ly, math.nan) for ly in run.layers]
        steps[stat] = last
        present[stat] = set(values)
    out.attrs["steps"] = steps
    out.attrs["recorded"] = present
    return out


def findings_and_verdict(
    run: Run, checkup: Checkup | None = None
) -> tuple[list[Finding], str, str]:
    """(findings, verdict, source) for a report.

    The checkup's when one is given; else the findings stored with the run; else those of
    ``gw.diagnose(run)``. ``source`` says which ("checkup", "stored", "diagnosed") or why
    there is no verdict ("not diagnosed: ...").
    """
    if checkup is not None:
        return list(checkup.findings), str(checkup.verdict), "checkup"
    stored = run.findings
    if not stored and run.stats.empty:
        return [], "not diagnosed", "not diagnosed: the run holds no statistics yet"
    if stored:
        return stored, _verdict(stored), "stored"
    try:
        from gradwatch.diagnose import diagnose
    except ImportError:  # pragma: no cover - diagnose/ is written by another team
        return [], "not diagnosed", "not diagnosed: gw.diagnose is not available"
    try:
        found = diagnose(run)
    except Exception as exc:  # noqa: BLE001 - a report still renders; the reason is shown
        return [], "not diagnosed", f"not diagnosed: {type(exc).__name__}: {exc}"
    return found, _verdict(found), "diagnosed"


def _verdict(findings: list[Finding]) -> str:
    from gradwatch.diagnose import verdict

    return verdict(findings)


def finite_positive(values: np.ndarray) -> np.ndarray:
    """``values`` with non-finite and non-positive entries replaced by NaN (for log axes)."""
    v = np.asarray(values, dtype=float).copy()
    v[~np.isfinite(v) | (v <= 0)] = np.nan
    return v
