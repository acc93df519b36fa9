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
:func:`write_with`: it never follows a symlink that the run directory did not create.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

FORMAT_VERSION = 1
META = "meta.json"
STATS_DIR = "stats"
FINDINGS = "findings.jsonl"
LOCK = ".gradwatch.lock"
PART_RE = re.compile(r"^part-(\d{6})(?:-(\d{6}))?\.parquet$")
COLUMNS = ("step", "layer", "stat", "value")


def part_name(first: int, last: int | None = None) -> str:
    """File name of a part holding flush ``first`` (or the compacted range first..last)."""
    return f"part-{first:06d}.parquet" if last is None else f"part-{first:06d}-{last:06d}.parquet"


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


def open_new(path: Path) -> int:
    """Open ``path`` for writing as a new file of this process, never through a symlink.

    Whatever is at ``path`` (a leftover temporary file, or a symlink someone planted) is
    removed first, without touching a link's target; then the file is created with
    ``O_EXCL | O_NOFOLLOW``, so a link planted in between makes the open fail instead of
    writing elsewhere.

    Returns:
        a file descriptor open for writing.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        shutil.rmtree(path)
    return os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644)


def write_with(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` atomically: ``write(fh)`` fills a temporary file, then a rename.

    The temporary file (``.NAME.tmp``) is opened with :func:`open_new`, so neither it nor
    ``path`` is ever written through a symlink (a rename replaces a link, not its target);
    on any failure (a full disk, a read-only filesystem) it is removed, so no empty or
    partial temporary file is left behind.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = open_new(tmp)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (see :func:`write_with`)."""
    write_with(path, lambda fh: fh.write(data))


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename (see :func:`write_with`)."""
    data = (json.dumps(obj, indent=2, default=str) + "\n").encode("utf-8")
    write_bytes_atomic(path, data)


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
