"""Rewrite the shown outputs of documentation pages from a real run of their blocks.

    python -m tests.docs.update_outputs docs/tutorial.md [--add]

Runs the page's ``python`` blocks in order in one namespace (in a temporary folder, as the
docs tests do) and replaces each ``<!-- docs-test: output=shown -->`` text block with what the
block above it printed. With ``--add``, a block that prints but shows no output gets one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
from pathlib import Path

import torch

from tests.docs.markdown_blocks import DOCS, python_blocks

MARK = "<!-- docs-test: output=shown -->"


def run_page(page: str) -> dict[int, str]:
    """Printed output of each python block of ``page`` (relative to docs/), by opening line."""
    namespace: dict = {"__name__": "docs_update"}
    printed: dict[int, str] = {}
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            for block in python_blocks():
                if block.page != page or block.missing():
                    continue
                torch.manual_seed(0)
                torch.set_num_threads(1)
                out = io.StringIO()
                code = compile("\n" * block.line + block.code, str(DOCS / page), "exec")
                with contextlib.redirect_stdout(out):
                    exec(code, namespace)  # noqa: S102 - the documentation's own code
                printed[block.line] = out.getvalue()
        finally:
            os.chdir(cwd)
    return printed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", help="a Markdown page under docs/, e.g. docs/tutorial.md")
    ap.add_argument("--add", action="store_true", help="add outputs where none is shown")
    args = ap.parse_args()
    path = Path(args.page).resolve()
    page = path.relative_to(DOCS).as_posix()
    printed = run_page(page)
    blocks = {b.line: b for b in python_blocks() if b.page == page}
    lines = path.read_text(encoding="utf-8").splitlines()
    # edit from the bottom up, so that earlier line numbers stay valid
    for line in sorted(printed, reverse=True):
        block, text = blocks[line], printed[line].rstrip("\n")
        new = [MARK, "```text", *text.splitlines(), "```"]
        if block.output is not None:
            start = block.output.line - 2  # the mark, then the opening fence
            end = block.output.line + len(block.output.code.splitlines())  # closing fence
            lines[start:end + 1] = new
        elif args.add and text.strip():
            close = line - 1 + len(block.code.splitlines()) + 1
            lines[close + 1:close + 1] = ["", *new]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
