"""The HTML report in a real headless browser (Debian's chromium): it renders, its script runs
without a console error, the interactive chart is built, and hostile layer names stay text."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess

import pytest
from matplotlib.image import imread

from .conftest import XSS, XSS_TITLE

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (apt-get install -y chromium): "
    "the headless-browser test of the HTML report cannot run",
)
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0", "--window-size=1200,2000",
]


def browse(page, tmp_path, name):
    """Load ``page`` once: screenshot, the DOM after scripts ran, and chromium's stderr."""
    shot = tmp_path / f"{name}.png"
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / (name + '-profile')}",
           f"--screenshot={shot}", "--dump-dom", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [ln for ln in proc.stderr.splitlines()
               if ":CONSOLE" in ln or "Uncaught" in ln]
    return shot, proc.stdout, console


def test_report_renders_runs_its_script_and_escapes_names(mixed_run, mixed_html, tmp_path):
    shot, dom, console = browse(mixed_html, tmp_path, "report")
    # the page's own script ran without any console message or uncaught error
    assert console == []
    # a real, non-blank screenshot, with the verdict badge's colour in it
    img = imread(shot)[..., :3]
    assert img.shape[:2] == (2000, 1200)
    assert img.std() > 0.05 and (img < 0.9).mean() > 0.02
    # the interactive chart: the script filled the SVG with one point per layer
    assert 'id="gw-flow" data-ready="1"' in dom
    svg = re.search(r'<svg id="gw-flow-svg".*?</svg>', dom, flags=re.S).group(0)
    assert svg.count('class="gw-pt"') == len(mixed_run.layers)
    assert svg.count("<path") == 2  # the chosen step and the first step for reference
    last = mixed_run.steps[-1]
    assert f"step {last} ({len(mixed_run.steps)} of {len(mixed_run.steps)})" in dom
    # hostile names are text: escaped in the DOM, the injected markup never ran
    assert html.escape(XSS) in dom and html.escape(XSS_TITLE, quote=False) in dom
    assert "<script>alert(1)" not in dom
    assert "PWNED" not in re.search(r"<title>(.*?)</title>", dom, flags=re.S).group(1)


def test_console_errors_would_be_seen(tmp_path):
    """The check above is meaningful: a page with a script error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><p>x</p><script>undefinedFunction();</script>")
    _, _, console = browse(bad, tmp_path, "bad")
    assert any("Uncaught ReferenceError" in ln for ln in console)
