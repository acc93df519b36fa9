"""Redraw docs/img/demo-report.png, the README's picture of the demo's report.

    python docs/make_report_picture.py                 # runs gradwatch demo (about 2 minutes)
    python docs/make_report_picture.py --from runs/demo   # the report of a demo already run

The top of ``report.html`` (the outcome, the findings, what gw.fix changed, both training runs
side by side) is photographed by Debian's headless chromium at 1100 CSS pixels and saved 880
pixels wide.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

IMG = Path(__file__).resolve().parent / "img" / "demo-report.png"
#: The browser window: the report's width, and how much of the page the picture shows.
WIDTH, HEIGHT = 1100, 3000
#: Width of the saved picture, in pixels.
SAVED_WIDTH = 880


def photograph(report: Path, out: Path = IMG) -> Path:
    """Screenshot the top of ``report`` with headless chromium and save it to ``out``."""
    from PIL import Image

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Debian's chromium is needed: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={Path(tmp) / 'profile'}", f"--window-size={WIDTH},{HEIGHT}",
             "--virtual-time-budget=20000", f"--screenshot={shot}", report.resolve().as_uri()],
            check=True, capture_output=True, timeout=300,
        )
        image = Image.open(shot).convert("RGB")
        height = round(image.height * SAVED_WIDTH / image.width)
        image.resize((SAVED_WIDTH, height), Image.LANCZOS).save(out, optimize=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the demo (unless ``--from`` names one already run) and photograph its report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", default=None,
                        help="the output folder of a gradwatch demo already run")
    parser.add_argument("--out", default=str(IMG), help=f"PNG to write (default {IMG})")
    args = parser.parse_args(argv)
    if args.source is None:
        source = Path(tempfile.mkdtemp()) / "demo"
        subprocess.run([sys.executable, "-m", "gradwatch.cli", "demo", "--out", str(source)],
                       check=True)
    else:
        source = Path(args.source)
    print(photograph(source / "report.html", Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
