"""The run directory format (version 1).

```
RUN_DIR/
  meta.json              format_version, versions, model summary, layer order, settings, status
  stats/part-000003.parquet         long form: step (int64), layer (dict string),
  stats/part-000000-000002.parquet  stat (dict string), value (float32); a range name marks a
                                    compacted part that replaces the parts it spans
  findings.jsonl         one Finding per line (written by diagnosis rules)
  .gradwatch.lock        present while a writer holds the directory (see store/lock.py)
```

Parts are written to a temporary name and renamed, so a part is either complete or absent: a
killed writer loses at most the statistics since its last flush. Every write goes through
:func:`gradwatch.store.safe_write.write_with`: it never follows a symlink that the run
directory did not create.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

FORMAT_VERSION = 1
META = "meta.json"
STATS_DIR = "stats"
FINDINGS = "findings.jsonl"
LOCK = ".gradwatch.lock"
#: A part's name: ``part-N.parquet`` or ``part-N-M.parquet`` (a compacted range), N and M
#: zero-padded to six digits and longer past 999,999 (a long run, or many resumed sessions).
PART_RE = re.compile(r"^part-(\d{6,})(?:-(\d{6,}))?\.parquet$")
COLUMNS = ("step", "layer", "stat", "value")


def part_name(first: int, last: int | None = None) -> str:
    """File name of a part holding flush ``first`` (or the compacted range first..last).

    The inverse of :func:`part_numbers`; both sides of every number past 999,999 keep all
    their digits.
    """
    return f"part-{first:06d}.parquet" if last is None else f"part-{first:06d}-{last:06d}.parquet"


def part_numbers(name: str) -> tuple[int, int] | None:
    """(first, last) flush numbers of a part's file name (equal for a single part).

    None for a name that is not a part's.
    """
    m = PART_RE.match(name)
    if m is None:
        return None
    first = int(m.group(1))
    return first, int(m.group(2)) if m.group(2) else first


def live_parts(stats_dir: Path) -> list[Path]:
    """Parts to read, in order: compacted ranges replace the single parts they span."""
    if not stats_dir.is_dir():
        return []
    spans = []  # (first, last, is_range, path)
    for f in stats_dir.iterdir():
        m = PART_RE.match(f.name)
        if m:
            a = int(m.group(1))
            b = int(m.group(2)) if m.group(2) else a
            spans.append((a, b, m.group(2) is not None, f))
    ranges = [(a, b) for a, b, is_range, _ in spans if is_range]
    keep = []
    for a, b, _, f in sorted(spans, key=lambda s: (s[0], -s[1])):
        covered = any(ra <= a and b <= rb and (ra, rb) != (a, b) for ra, rb in ranges)
        if not covered:
            keep.append(f)
    return keep


def remove_entry(path: Path) -> None:
    """Remove a file, a symlink (never its target) or a directory tree, if present.

    ``shutil.rmtree`` alone refuses a symlink to a directory; here the link itself is
    unlinked, and links inside a real directory are unlinked without being followed.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def is_real_dir(path: Path) -> bool:
    """Whether ``path`` is a directory itself (not a symlink to one)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
