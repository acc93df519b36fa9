"""Every ``python`` code block of docs/ runs.

The blocks of a page run in order in one namespace (as a reader pasting them one after the
other would), in a temporary working directory of their own, on one thread, with fixed seeds and the
environment restored after each block. One test per block, so a failure names the page, the
block and (in the traceback) the line of the Markdown file. A block followed by a shown output
(``<!-- docs-test: output=shown -->`` and a ``text`` block) must print that output. A block marked
``<!-- docs-test: requires=lightning -->`` is skipped, with the reason, when that module is
not installed, and so is every later block of its page (they run in its namespace and may use
its names); CI installs every extra, so there they run.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.docs.markdown_blocks import DOCS, Block, python_blocks
from tests.docs.outputs import differences

BLOCKS = python_blocks()


@dataclass
class Page:
    """A page's shared namespace and working directory, and how far its blocks have run."""

    namespace: dict
    workdir: Path
    done: set[int] = field(default_factory=set)
    failed: str | None = None


_PAGES: dict[str, Page] = {}


def _page(block: Block, factory: pytest.TempPathFactory) -> Page:
    page = _PAGES.get(block.page)
    if page is None:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", block.page.removesuffix(".md"))
        page = Page({"__name__": f"docs_{slug}"}, factory.mktemp(f"docs_{slug}"))
        _PAGES[block.page] = page
        random.seed(0)
        np.random.seed(0)
    return page


def _run(block: Block, page: Page) -> str:
    """Execute one block in the page's namespace, restoring cwd, environment and threads.

    Returns what the block printed (it is also passed on to the terminal).
    """
    cwd, env, threads = Path.cwd(), dict(os.environ), torch.get_num_threads()
    os.chdir(page.workdir)
    torch.set_num_threads(1)  # the examples' models are small: one thread is fastest
    printed = io.StringIO()
    try:
        # leading newlines: tracebacks give the line number in the Markdown file
        code = compile("\n" * block.line + block.code, str(DOCS / block.page), "exec")
        with contextlib.redirect_stdout(printed):
            exec(code, page.namespace)  # noqa: S102 - the documentation's own code
        return printed.getvalue()
    finally:
        sys.stdout.write(printed.getvalue())
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        torch.set_num_threads(threads)
        import matplotlib.pyplot as plt

        plt.close("all")


def test_every_page_has_been_collected():
    assert BLOCKS, f"no python blocks found under {DOCS}"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_docs_python_block(block: Block, tmp_path_factory: pytest.TempPathFactory):
    page = _page(block, tmp_path_factory)
    if page.failed:
        pytest.skip(f"block {page.failed} of this page failed; the later blocks need its names")
    # a later block may use the names of a block skipped for a missing module: skip it too
    for earlier in BLOCKS:
        if earlier.page == block.page and earlier.index < block.index and earlier.missing():
            pytest.skip(
                f"block {earlier.id} needs {', '.join(earlier.missing())}, not installed here "
                f"(CI installs it), and this block runs after it in the same namespace"
            )
    # run earlier blocks first when this one is selected alone (pytest -k)
    for earlier in BLOCKS:
        if earlier.page == block.page and earlier.index < block.index:
            if earlier.index not in page.done and not earlier.missing():
                _run(earlier, page)
                page.done.add(earlier.index)
    missing = block.missing()
    if missing:
        pytest.skip(
            f"needs {', '.join(missing)}, not installed here (CI installs it): "
            f"pip install {' '.join(missing)}"
        )
    torch.manual_seed(0)
    try:
        printed = _run(block, page)
    except BaseException:
        page.failed = block.id
        raise
    page.done.add(block.index)
    if block.output is not None:  # the page shows what this block prints: it must be true
        diff = differences(printed, block.output.code)
        assert not diff, (
            f"{block.id} prints something else than the output shown under it (line "
            f"{block.output.line}): {diff[:5]}; python -m tests.docs.update_outputs rewrites it"
        )
