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

from gradwatch.argcheck import check_path_length
from gradwatch.errors import GradwatchTypeError, RunDirectoryError
from gradwatch.findings import Finding, finding_problem
from gradwatch.store.format import FINDINGS, FORMAT_VERSION, META, STATS_DIR, live_parts
from gradwatch.verdicts import Findings

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
    def findings(self) -> Findings:
        """Findings stored with the run (``findings.jsonl``)."""
        return Findings(Finding.from_dict(d) for d in self._findings)

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
    """Read every complete Parquet part of ours; any other part is skipped with a warning.

    Skipped: a part that is not a file, cannot be read (truncated, corrupt), or holds other
    columns than ``step, layer, stat, value`` with types that convert to ours, or missing
    values in them. Files in ``stats/`` that are not named like parts are not looked at.
    """
    tables = []
    for part in live_parts(run_dir / STATS_DIR):
        try:
            tables.append(_read_part(part))
        except (OSError, ValueError, pa.ArrowException) as exc:
            warnings.warn(
                f"skipping unreadable part {part} ({exc}); the other parts are loaded",
                RuntimeWarning,
                stacklevel=3,
            )
    return tables_to_frame(tables)


def _read_part(part: Path) -> pa.Table:
    """One part as a table of our schema, or ValueError / an Arrow error saying why not."""
    if not part.is_file():
        raise ValueError("not a regular file")
    table = pq.read_table(part)
    missing = [c for c in _PLAIN.names if c not in table.column_names]
    if missing:
        raise ValueError(
            f"not a gradwatch part (columns {table.column_names}, missing {missing})"
        )
    table = table.select(list(_PLAIN.names))
    for fld in table.schema:
        if not _KIND_OK[fld.name](fld.type):
            raise ValueError(f"not a gradwatch part (column {fld.name!r} is {fld.type})")
        if table.column(fld.name).null_count and fld.name != "value":
            raise ValueError(f"column {fld.name!r} has missing values")
    return table.cast(_PLAIN) if table.schema != _PLAIN else table


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):  # how the writer stores layer and stat names
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


_KIND_OK = {
    "step": pa.types.is_integer,
    "layer": _is_text,
    "stat": _is_text,
    "value": lambda t: pa.types.is_floating(t) or pa.types.is_integer(t),
}


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
    check_path_length("run_dir", run_dir)
    path = Path(run_dir)
    if not path.exists():
        raise RunDirectoryError(f"run_dir {str(path)!r} does not exist")
    if not path.is_dir():
        raise RunDirectoryError(f"run_dir {str(path)!r} is a file, not a run directory")
    if not (path / META).is_file():
        raise RunDirectoryError(
            f"run_dir {str(path)!r} is not a gradwatch run (no {META}); "
            "pass the directory given to gw.watch(run_dir=...)"
        )
    meta = read_meta(path)
    findings = read_findings(path / FINDINGS)
    return Run(meta=meta, stats=read_stats(path), path=path, _findings=findings)


#: Keys of meta.json that gradwatch reads, and the JSON types each must have when present.
META_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str, type(None)),
    "status": (str,),
    "layers": (list,),
    "steps_seen": (int,),
    "steps_recorded": (int,),
    "started": (int, float),
    "updated": (int, float, type(None)),
    "diagnosed": (bool,),
    "layer_info": (dict,),
    "activations": (dict,),
    "model": (dict,),
    "settings": (dict,),
    "config": (dict, type(None)),
    "structure": (dict, type(None)),
}


def read_meta(run_dir: Path) -> dict[str, Any]:
    """Read and check ``run_dir/meta.json``.

    Raises:
        RunDirectoryError: the file is unreadable, not UTF-8 JSON, not an object, has no
            usable ``format_version`` (or a newer one), or a key gradwatch reads has the
            wrong type; the message names the file and what is wrong.
    """
    meta_path = run_dir / META
    where = f"run_dir {str(run_dir)!r}: {META}"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError: a ValueError
        raise RunDirectoryError(f"{where} is corrupt ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or "format_version" not in meta:
        raise RunDirectoryError(
            f"{where} is not a gradwatch run description (a JSON "
            f"{type(meta).__name__} without format_version)"
        )
    version = meta["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RunDirectoryError(
            f"{where} has format_version {version!r}, not a positive integer; it was not "
            "written by gradwatch"
        )
    if version > FORMAT_VERSION:
        raise RunDirectoryError(
            f"run_dir {str(run_dir)!r} was written in run format {version!r}, newer than this "
            f"gradwatch reads ({FORMAT_VERSION}); upgrade gradwatch to read it"
        )
    check_meta(meta, where)
    return meta


def check_meta(meta: dict[str, Any], where: str = "run.meta") -> None:
    """Check the types of the keys of a run's meta that gradwatch reads (:data:`META_TYPES`).

    Args:
        meta: a run's meta (``meta.json``, or ``Run.meta`` of a run made in memory).
        where: how messages name it.

    Raises:
        RunDirectoryError: a key has the wrong type; the message names it.
    """
    for key, types in META_TYPES.items():
        value = meta.get(key)
        if key not in meta or _is_json_type(value, types):
            continue
        names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise RunDirectoryError(
            f"{where}: {key!r} must be {names}, got {type(value).__name__} {value!r:.60}; "
            "the file was changed by hand or not written by gradwatch"
        )
    bad = [x for x in meta.get("layers", []) if not isinstance(x, str)]
    if bad:
        raise RunDirectoryError(f"{where}: 'layers' must hold layer names, got {bad[0]!r:.60}")


def _is_json_type(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # JSON true is not a count
    return isinstance(value, types)


def read_findings(fpath: Path) -> list[dict[str, Any]]:
    """The findings stored in ``fpath`` (``findings.jsonl``), as dicts.

    A line that is not UTF-8, not JSON, or not a finding (an object with a string ``kind``
    and fields of the right types) is skipped, with one warning naming the file and how many
    lines were skipped. A missing file gives no findings.
    """
    try:
        raw = fpath.read_bytes() if fpath.is_file() else b""
    except OSError as exc:
        warnings.warn(f"{fpath}: cannot read the findings ({exc})", RuntimeWarning, stacklevel=3)
        return []
    findings, skipped = [], 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            d = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError: a ValueError
            skipped += 1
            continue
        if finding_problem(d) is not None:
            skipped += 1
            continue
        findings.append(d)
    if skipped:
        warnings.warn(
            f"{fpath}: skipped {skipped} line(s) that are not gradwatch findings",
            RuntimeWarning,
            stacklevel=3,
        )
    return findings
