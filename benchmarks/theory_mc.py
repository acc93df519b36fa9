"""``gw.theory.predict`` against Monte Carlo: every configuration, predicted vs measured per layer.

Usage::

    python benchmarks/theory_mc.py                    # every configuration (minutes on 2 cores)
    python benchmarks/theory_mc.py --quick            # the subset the default test suite runs
    python benchmarks/theory_mc.py --only gpt2_4,bert_4
    python benchmarks/theory_mc.py --json benchmarks/results/theory_mc.json
    python benchmarks/theory_mc.py --table benchmarks/results/theory_mc.json   # no run: the
                                      # Markdown table of docs/explain/theory.md from a JSON

For each configuration (``benchmarks/theory_mc/configs.py``) the theory predicts each
layer's attenuation ‖δ_layer‖²/‖δ_last‖² from the weights of one model, and Monte Carlo
measures its geometric mean over freshly drawn models (brute-force autograd, a random linear
read-out); a layer passes within max(0.1 decade, 5% of the log). Prints one line per
configuration and writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from benchmarks.theory_mc import BY_NAME, CONFIGS, check_config  # noqa: E402
from benchmarks.theory_mc.table import markdown  # noqa: E402


def run(names: list[str], seeds: int | None = None) -> list[dict]:
    """Check the named configurations in order; print one line each."""
    rows = []
    for i, name in enumerate(names, 1):
        row = check_config(BY_NAME[name], seeds)
        rows.append(row)
        mark = "ok" if row["passed"] else "FAIL"
        worst = row["worst_over_tolerance"]
        print(
            f"[{i}/{len(names)}] {name}: {mark}, {row['n_layers']} layers, worst "
            f"{worst:.2f} of the tolerance, verdict {row['verdict']}, theory "
            f"{row['theory_cpu_s']:.1f} s cpu",
            file=sys.stderr,
            flush=True,
        )
    return rows


def _clean(obj):
    if hasattr(obj, "item") and not isinstance(obj, list | dict):  # numpy scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns 1 when a configuration fails."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the quick configurations")
    parser.add_argument("--only", default="", help="comma-separated configuration names")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per configuration")
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument(
        "--table", default="", metavar="JSON", help="print the Markdown table of a results file"
    )
    parser.add_argument("--markdown", action="store_true", help="print the Markdown table too")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())["configs"]))
        return 0
    torch.set_num_threads(1)
    names = [c.name for c in CONFIGS if c.quick or not args.quick]
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            parser.error(f"unknown configuration(s) {unknown}; known: {', '.join(BY_NAME)}")
    start = time.time()
    rows = run(names, args.seeds)
    passed = sum(r["passed"] for r in rows)
    print(f"{passed}/{len(rows)} configurations pass ({time.time() - start:.0f} s)", flush=True)
    if args.markdown:
        print(markdown(_clean(rows)))
    if args.json:
        out = {
            "torch": torch.__version__,
            "platform": platform.platform(terse=True),
            "wall_s": time.time() - start,
            "configs": rows,
        }
        Path(args.json).write_text(json.dumps(_clean(out), indent=1, ensure_ascii=False))
    return 0 if passed == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
