"""Read the fenced code blocks of the documentation pages.

A block is run by the docs tests when its info string starts with ``python``. An HTML comment
right before the fence (invisible on the rendered page and on GitHub) can mark it:

    <!-- docs-test: requires=lightning,transformers -->

runs the block only when those modules can be imported (CI installs them); otherwise the
block is skipped, with the missing module as the reason. Blocks of a page run in order, in
one namespace.

    <!-- docs-test: output=shown -->

before a ``text`` block marks it as the printed output of the ``python`` block just above it:
the test compares what that block prints with it (numbers within a tolerance), and
``python -m tests.docs.update_outputs`` rewrites it from a real run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")
MARK = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<body>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown page."""

    page: str  # path relative to docs/
    index: int  # position among the page's blocks of the same language
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    requires: tuple[str, ...] = ()
    is_output: bool = False  # a text block marked as the output of the block above
    output: Block | None = None  # for a python block: its shown output block, if any

    @property
    def id(self) -> str:
        """Test id: ``howto/watch.md:2`` (block 2 of the page, counted from 1)."""
        return f"{self.page}:{self.index + 1}"

    def missing(self) -> list[str]:
        """Modules this block requires that cannot be imported here."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]


def pages(root: Path = DOCS) -> list[Path]:
    """Every Markdown page under ``root``, sorted."""
    return sorted(root.rglob("*.md"))


def blocks(path: Path, root: Path = DOCS) -> list[Block]:
    """Every fenced code block of one page, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    counts: dict[str, int] = {}
    i = 0
    mark: dict[str, str] = {}
    while i < len(lines):
        m = MARK.match(lines[i])
        if m:
            mark = dict(
                part.split("=", 1) for part in m.group("body").split() if "=" in part
            )
            i += 1
            continue
        f = FENCE.match(lines[i])
        if not f:
            if lines[i].strip():
                mark = {}
            i += 1
            continue
        fence, indent = f.group("fence"), f.group("indent")
        lang = (f.group("info").strip().split() or [""])[0].lstrip("{.").rstrip("}")
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (
            lines[i].strip().startswith(fence[0] * len(fence)) and not lines[i].strip(fence[0])
        ):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line)
            i += 1
        i += 1  # closing fence
        requires = tuple(r for r in mark.get("requires", "").split(",") if r)
        idx = counts.get(lang, 0)
        counts[lang] = idx + 1
        out.append(
            Block(
                page=path.relative_to(root).as_posix(),
                index=idx,
                line=start + 1,
                lang=lang,
                code="\n".join(body) + "\n",
                requires=requires,
                is_output=mark.get("output") == "shown",
            )
        )
        mark = {}
    return out


def python_blocks(root: Path = DOCS) -> list[Block]:
    """Every ``python`` block of every page, page by page, in order, with its shown output."""
    out = []
    for p in pages(root):
        page = blocks(p, root)
        for b, nxt in zip(page, [*page[1:], None], strict=False):
            if b.lang != "python":
                continue
            if nxt is not None and nxt.is_output:
                b = dataclasses.replace(b, output=nxt)
            out.append(b)
    return out
