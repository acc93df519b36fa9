"""``mkdocs build --strict`` passes: every page in the nav exists, no broken link or anchor, every
mkdocstrings reference resolves to a real object."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NEEDED = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    """The site, built once with ``mkdocs build --strict`` (skipped without the docs extra)."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m.split(".")[0]) is None]
    if missing:
        pytest.skip(
            f"the documentation tools are not installed ({', '.join(missing)}): "
            "pip install -e '.[docs]'"
        )
    site = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site),
         "--config-file", str(ROOT / "mkdocs.yml")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return site


def test_mkdocs_build_strict(built_site):
    site = built_site
    # every page of the nav was rendered, and the API pages hold the objects they name
    for page in ("index.html", "tutorial/index.html", "reference/cli/index.html",
                 "reference/statistics/index.html", "howto/watch/index.html"):
        assert (site / page).is_file(), page
    api = (site / "reference" / "watch" / "index.html").read_text(encoding="utf-8")
    assert 'id="gradwatch.watch"' in api and 'id="gradwatch.Monitor"' in api


EXTERNAL = re.compile(
    r"""<(?:script|img|iframe|source)\b[^>]*\bsrc\s*=\s*["']?(https?:)?//"""
    r"""|<link\b[^>]*\bhref\s*=\s*["']?(https?:)?//"""
    r"""|@import\s+(?:url\()?["']?(https?:)?//"""
    r"""|url\(\s*["']?(https?:)?//""",
    re.I,
)


def test_built_site_works_offline(built_site):
    """No page or stylesheet of the site loads a font, script or style from the internet."""
    offenders = []
    for path in sorted(built_site.rglob("*")):
        if path.suffix not in (".html", ".css"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in EXTERNAL.finditer(text):
            offenders.append(f"{path.relative_to(built_site)}: {text[m.start():m.end() + 60]}")
    assert offenders == []
    # the maths renderer and its fonts are the vendored ones, and pages use them
    tutorial = (built_site / "tutorial" / "index.html").read_text(encoding="utf-8")
    assert "assets/katex/katex.min.js" in tutorial and 'class="arithmatex"' in tutorial
    assert list((built_site / "assets" / "katex" / "fonts").glob("KaTeX_Main-Regular.woff2"))
    assert "fonts.googleapis" not in tutorial and "fonts.gstatic" not in tutorial


def test_offline_check_would_see_a_web_font():
    """The pattern above catches the usual ways a page pulls from the internet."""
    for bad in ('<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">',
                '<script src="https://cdn.jsdelivr.net/npm/katex/dist/katex.min.js"></script>',
                "@import url(https://fonts.googleapis.com/css2?family=Inter);",
                "src: url(//fonts.gstatic.com/x.woff2)"):
        assert EXTERNAL.search(bad), bad
    assert not EXTERNAL.search('<a href="https://arxiv.org/abs/1502.01852">He et al.</a>')
