"""Writing findings next to the statistics: ``RUN_DIR/findings.jsonl``."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from gradwatch.argcheck import check_path_length
from gradwatch.errors import GradwatchTypeError, RunDirectoryError
from gradwatch.findings import Finding, checked_dict
from gradwatch.jsonable import jsonable
from gradwatch.store.format import FINDINGS, META
from gradwatch.store.safe_write import write_atomic


def store_findings(run_dir: str | Path, findings: Iterable[Finding]) -> Path:
    """Write ``findings`` to ``run_dir/findings.jsonl``, replacing what was there.

    One ``Finding.to_dict()`` JSON object per line, numbers as :mod:`gradwatch.jsonable` writes
    them (NaN and ±inf as "nan", "inf", "-inf"). The file is written to a temporary name and
    renamed, so readers see the old file or the new one, never half of one.

    Args:
        run_dir: the run directory.
        findings: the findings, e.g. ``gw.diagnose(run_dir)``.

    Returns:
        the path of ``findings.jsonl``.

    Raises:
        GradwatchTypeError: ``run_dir`` is not a path, or an item of ``findings`` is not a
            Finding.
        RunDirectoryError: ``run_dir`` is not an existing directory.
    """
    if not isinstance(run_dir, str | Path):
        raise GradwatchTypeError(
            f"run_dir must be a path to a run directory, got {type(run_dir).__name__}"
        )
    check_path_length("run_dir", run_dir)
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirectoryError(f"run_dir {str(path)!r} is not an existing directory")
    if isinstance(findings, str | bytes | dict) or not hasattr(findings, "__iter__"):
        raise GradwatchTypeError(
            f"findings must be a list of Finding objects, got {type(findings).__name__}; pass "
            "the list returned by gw.diagnose"
        )
    lines = []
    for f in findings:
        if not isinstance(f, Finding):
            raise GradwatchTypeError(
                f"findings must hold Finding objects, got {type(f).__name__}; pass the list "
                "returned by gw.diagnose"
            )
        lines.append(json.dumps(jsonable(checked_dict(f)), allow_nan=False))
    if not (path / META).is_file():
        raise RunDirectoryError(
            f"run_dir {str(path)!r} is not a gradwatch run (no {META}); pass the directory "
            "given to gw.watch(run_dir=...)"
        )
    # a new temporary file renamed over the target: never through a planted symlink
    return write_atomic(path / FINDINGS, "".join(line + "\n" for line in lines))
