"""Reading a run directory back: :func:`load` returns a :class:`Run`."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gradwatch.errors import GradwatchTypeError, RunDirectoryError
from gradwatch.findings import Finding
from gradwatch.store.format import FINDINGS, FORMAT_VERSION, META, STATS_DIR, live_parts

EMPTY = pd.DataFrame(
    {
        "step": pd.Series([], dtype="int64"),
        "layer": pd.Series([], dtype="object"),
        "stat": pd.Series([], dtype="object"),
        "value": pd.Series([], dtype="float64"),
    }
)


@dataclass
class Run:
    """A recorded run: settings, layer order and the statistics in long form.

    Attributes:
        meta: versions, model summary, layer order, settings and status.
        stats: DataFrame with columns step (int), layer (str), stat (str), value (float);
            the loss has layer "".
        path: the run directory, or None for a run kept in memory.
    """

    meta: dict[str, Any]
    stats: pd.DataFrame
    path: Path | None = None
    _findings: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def layers(self) -> list[str]:
        """Layer names, input side first."""
        return list(self.meta.get("layers", []))

    @property
    def steps(self) -> list[int]:
        """Recorded steps, in order."""
        return sorted(self.stats["step"].unique().tolist())

    @property
    def findings(self) -> list[Finding]:
        """Findings stored with the run (``findings.jsonl``)."""
        return [Finding.from_dict(d) for d in self._findings]

    def pivot(self, stat: str) -> pd.DataFrame:
        """One statistic as a wide table: index step, one column per layer (input side first).

        Raises:
            GradwatchValueError: ``stat`` is not a statistic name.
        """
        from gradwatch.errors import GradwatchValueError
        from gradwatch.stats import ALL_STATS

        if stat not in ALL_STATS:
            raise GradwatchValueError(
                f"stat must be one of {', '.join(ALL_STATS)}; got {stat!r}"
            )
        df = self.stats[self.stats["stat"] == stat]
        # pivot (not pivot_table): NaN values, and all-NaN steps or layers, stay visible
        df = df.drop_duplicates(["step", "layer"], keep="last")
        wide = df.pivot(index="step", columns="layer", values="value")
        cols = [c for c in self.layers + [""] if c in wide.columns]
        return wide[cols]

    def loss(self) -> pd.Series:
        """The loss per recorded step."""
        df = self.stats[(self.stats["stat"] == "loss")]
        return df.set_index("step")["value"].sort_index()

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "memory"
        return (
            f"Run({where}: {len(self.layers)} layers, {len(self.steps)} steps, "
            f"{len(self.stats)} values, status={self.meta.get('status')!r})"
        )


def read_stats(run_dir: Path) -> pd.DataFrame:
    """Read every complete Parquet part; a corrupt part is skipped with a warning."""
    tables = []
    for part in live_parts(run_dir / STATS_DIR):
        try:
            tables.append(pq.read_table(part))
        except (OSError, pa.ArrowInvalid) as exc:
            warnings.warn(
                f"skipping unreadable part {part} ({exc}); the other parts are loaded",
                RuntimeWarning,
                stacklevel=3,
            )
    return tables_to_frame(tables)


def tables_to_frame(tables: list[pa.Table]) -> pd.DataFrame:
    """Concatenate parts into the long DataFrame of :attr:`Run.stats`."""
    if not tables:
        return EMPTY.copy()
    table = pa.concat_tables([t.cast(_PLAIN) if t.schema != _PLAIN else t for t in tables])
    df = table.to_pandas()
    df["value"] = df["value"].astype("float64")
    return df.sort_values(["step", "layer", "stat"], kind="stable").reset_index(drop=True)


_PLAIN = pa.schema(
    [("step", pa.int64()), ("layer", pa.string()), ("stat", pa.string()), ("value", pa.float32())]
)


def load(run_dir: str | Path | Run) -> Run:
    """Load a run directory written by :func:`gradwatch.watch`.

    Args:
        run_dir: path to the run directory (or a Run, returned as is).

    Returns:
        the :class:`Run`. A run whose writer was killed loads everything that was flushed.

    Raises:
        RunDirectoryError: the directory is missing, is not a gradwatch run, has a corrupt
            ``meta.json``, or was written by a newer gradwatch.
    """
    if isinstance(run_dir, Run):
        return run_dir
    if not isinstance(run_dir, str | Path):
        raise GradwatchTypeError(
            f"run_dir must be a path to a run directory, got {type(run_dir).__name__}"
        )
    path = Path(run_dir)
    if not path.exists():
        raise RunDirectoryError(f"run_dir {str(path)!r} does not exist")
    if not path.is_dir():
        raise RunDirectoryError(f"run_dir {str(path)!r} is a file, not a run directory")
    meta_path = path / META
    if not meta_path.is_file():
        raise RunDirectoryError(
            f"run_dir {str(path)!r} is not a gradwatch run (no {META}); "
            "pass the directory given to gw.watch(run_dir=...)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirectoryError(f"run_dir {str(path)!r}: {META} is corrupt ({exc})") from None
    if not isinstance(meta, dict) or "format_version" not in meta:
        raise RunDirectoryError(
            f"run_dir {str(path)!r}: {META} is not a gradwatch run description "
            "(no format_version)"
        )
    version = meta["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise RunDirectoryError(
            f"run_dir {str(path)!r} was written in run format {version!r}, newer than this "
            f"gradwatch reads ({FORMAT_VERSION}); upgrade gradwatch to read it"
        )
    findings = []
    fpath = path / FINDINGS
    if fpath.is_file():
        for line in fpath.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                try:
                    findings.append(json.loads(line))
                except ValueError:
                    warnings.warn(f"{fpath}: skipping a corrupt line", RuntimeWarning, stacklevel=2)
    return Run(meta=meta, stats=read_stats(path), path=path, _findings=findings)
