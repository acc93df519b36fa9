"""``mkdocs build --strict`` passes: every page in the nav exists, no broken link or anchor, every
mkdocstrings reference resolves to a real object."""

from __future__ import annotations

import html
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
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
    for page in ("index.html", "tutorial.html", "reference/cli.html",
                 "reference/statistics.html", "howto/watch.html"):
        assert (site / page).is_file(), page
    api = (site / "reference" / "watch.html").read_text(encoding="utf-8")
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
    tutorial = (built_site / "tutorial.html").read_text(encoding="utf-8")
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


CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium): "
    "the site's browser checks cannot run")


def chromium_dom(url, width=1400, budget=20000):
    """The DOM of ``url`` after its scripts ran, and chromium's console lines."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--no-first-run", "--disable-background-networking", "--enable-logging=stderr",
             "--v=0", f"--user-data-dir={profile}", f"--window-size={width},1000",
             f"--virtual-time-budget={budget}", "--dump-dom", url],
            capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    return proc.stdout, console


def test_site_links_name_files_so_it_works_without_a_server(built_site):
    index = (built_site / "index.html").read_text(encoding="utf-8")
    links = set(re.findall(r'<a [^>]*href="([^"#:]+)"', index))
    assert "tutorial.html" in links and "howto/check.html" in links
    assert not [ln for ln in links if ln.endswith("/")]  # a folder opens as a file listing
    # search reads its index from a script, and its worker shim is the vendored copy
    assert (built_site / "search" / "search_index.js").read_text()[:13] == "var __index ="
    assert '<script src="assets/iframe-worker/shim.js">' in index


@needs_chromium
def test_search_works_when_the_site_is_opened_as_files(built_site):
    """Material's search on a file:// page: no "search index" error, and results."""
    dom, console = chromium_dom((built_site / "index.html").as_uri() + "?q=vanishing")
    assert console == []
    found = re.search(r'class="md-search-result__meta">(\d+) matching document', dom)
    assert found and int(found.group(1)) > 3, dom[-2000:]
    assert dom.count('class="md-search-result__item"') > 3


MEASURE = """<script>
window.addEventListener("load", function () { setTimeout(function () {
  var cut = [].slice.call(document.querySelectorAll("pre > code")).filter(function (c) {
    return c.scrollWidth > c.clientWidth + 1; }).map(function (c) {
    return c.textContent.split("\\n").sort(function (a, b) {
      return b.length - a.length; })[0].slice(0, 100); });
  parent.postMessage(JSON.stringify({page: location.pathname,
    blocks: document.querySelectorAll("pre > code").length, cut: cut}), "*");
}, 300); });
</script>"""


@needs_chromium
def test_code_blocks_are_not_cut_at_1400_px(built_site):
    """Every code block of every page shows its whole lines in a 1400 px window."""
    frames = []
    for page in sorted(built_site.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        if "<pre" not in text:
            continue
        copy = page.with_name(page.stem + ".measured.html")
        copy.write_text(text.replace("</body>", MEASURE + "</body>"), encoding="utf-8")
        frames.append(copy.relative_to(built_site).as_posix())
    assert len(frames) > 10
    wrapper = built_site / "measure-code-blocks.html"
    wrapper.write_text(
        "<!DOCTYPE html><html><body style='margin:0'>"
        + "".join(f'<iframe src="{f}" style="border:0;width:1400px;height:900px;'
                  'display:block"></iframe>' for f in frames)
        + "<script>var got = []; window.addEventListener('message', function (e) {"
          "got.push(JSON.parse(e.data)); var pre = document.getElementById('gw-out') || "
          "document.body.appendChild(Object.assign(document.createElement('pre'), "
          "{id: 'gw-out'})); pre.textContent = JSON.stringify(got); });</script>"
          "</body></html>", encoding="utf-8")
    dom, _ = chromium_dom(wrapper.as_uri(), width=1420, budget=60000)
    got = json.loads(html.unescape(re.search(r'<pre id="gw-out">(.*?)</pre>', dom,
                                             flags=re.S).group(1)))
    assert len(got) == len(frames)  # every page was measured
    assert sum(g["blocks"] for g in got) > 100
    cut = {g["page"].rsplit("/", 1)[-1]: g["cut"] for g in got if g["cut"]}
    assert cut == {}
