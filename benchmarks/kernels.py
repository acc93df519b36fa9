"""gradwatch's compiled kernels against torch's, on the gradients of a real backward pass.

Each iteration trains one step of a benchmark network (the MLPs (a) and (b) of overhead.py)
and, between its backward pass and its optimizer step, times one reading of every gradient:
``torch._foreach_norm`` (the floor row of overhead.py), or gradwatch's ``sumsq_max`` with
each float32 vector code this CPU has (0 portable, 1 AVX2, 2 AVX-512). The weight snapshot
before the step and the update norms after it are timed the same way. The readings take turns
over the iterations, so that each meets the caches a training step leaves; the figure is the
median over iterations.

    python benchmarks/kernels.py                      # (a) and (b), 1 thread
    python benchmarks/kernels.py --networks a --iters 400 --threads 2 --out results/k.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import make  # noqa: E402

from gradwatch.stats import native  # noqa: E402

ISA_NAMES = {0: "portable", 1: "avx2", 2: "avx512"}


def bench(name: str, iters: int) -> dict[str, float]:
    """Median microseconds of each reading on network ``name``."""
    nat = native.build()
    if nat is None:
        raise SystemExit("the compiled kernels cannot be built here (no C++ compiler)")
    best = nat.set_isa(2)
    isas = list(range(best + 1))
    torch.manual_seed(0)
    _, model, x, loss_fn = make(name, "cpu")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    params = list(model.parameters())
    reader = nat.ParamGrads(params)
    flat = torch.empty(sum(p.numel() for p in params))
    jobs = [("floor: torch._foreach_norm", None, "foreach")]
    for k in isas:
        name = ISA_NAMES[k]
        jobs += [(f"sumsq ({name})", k, "sumsq"), (f"sumsq + max ({name})", k, "max"),
                 (f"snapshot + update norms ({name})", k, "update")]
    times: dict[str, list[float]] = {label: [] for label, _, _ in jobs}
    tick = time.perf_counter
    try:
        for it in range(iters * len(jobs)):
            label, isa, what = jobs[it % len(jobs)]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x)).backward()
            if isa is not None:
                nat.set_isa(isa)
            t0 = tick()
            if what == "foreach":
                torch._foreach_norm([p.grad for p in params])
            elif what == "sumsq":
                reader.sumsq_max(False)
            elif what == "max":
                reader.sumsq_max(True)
            else:
                nat.snapshot_take(params, flat)
                t1 = tick()
                opt.step()
                t2 = tick()
                nat.update_norms(params, flat)
                times[label].append((t1 - t0) + (tick() - t2))
                continue
            times[label].append(tick() - t0)
            opt.step()
    finally:
        nat.set_isa(best)
    return {label: 1e6 * statistics.median(v[3:]) for label, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", default="a,b")
    ap.add_argument("--iters", type=int, default=200, help="timings of each reading")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    results = {name: bench(name, args.iters) for name in args.networks.split(",")}
    names = list(results)
    print("| reading (median µs) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label in results[names[0]]:
        print(f"| {label} | " + " | ".join(f"{results[n][label]:.0f}" for n in names) + " |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
