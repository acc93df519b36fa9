"""docs/make_figures.py --quick draws every figure the tutorial shows."""

from __future__ import annotations

import importlib.util
import re
import sys

from tests.docs.markdown_blocks import DOCS


def _load_make_figures():
    spec = importlib.util.spec_from_file_location("make_figures", DOCS / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _shown(page: str) -> set[str]:
    text = (DOCS / page).read_text(encoding="utf-8")
    return set(re.findall(r"!\[[^\]]*\]\(img/([\w.-]+)\.png\)", text))


def test_make_figures_quick_draws_every_tutorial_figure(tmp_path):
    make_figures = _load_make_figures()
    shown = _shown("tutorial.md")
    assert shown, "the tutorial shows no figure from img/"
    not_drawn = shown - set(make_figures.FIGURES)
    assert not not_drawn, f"the tutorial shows figures make_figures.py does not draw: {not_drawn}"
    assert make_figures.main(["--quick", "--out", str(tmp_path)]) == 0
    for name in make_figures.FIGURES:
        png = tmp_path / f"{name}.png"
        assert png.is_file(), f"make_figures.py --quick did not write {png.name}"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png.name} is not a PNG"
        assert png.stat().st_size < 200_000, f"{png.name} is larger than 200 kB"


def test_every_tutorial_figure_is_committed_with_its_command_beside_it():
    text = (DOCS / "tutorial.md").read_text(encoding="utf-8")
    commands = re.findall(r"python docs/make_figures\.py --only ([\w-]+)", text)
    for name in _shown("tutorial.md"):
        assert (DOCS / "img" / f"{name}.png").is_file(), f"docs/img/{name}.png is missing"
        assert any(c in name for c in commands), (
            f"the tutorial does not show the command that draws img/{name}.png "
            f"(python docs/make_figures.py --only {name})"
        )
