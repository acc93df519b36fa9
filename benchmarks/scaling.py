"""How the Monitor's cost grows with the model, and that its memory stays bounded.

    python benchmarks/scaling.py [--quick] [--out benchmarks/results/scaling.json]

Reports, on this machine's CPU:
- overhead ratio (watched / plain training, default configuration, interleaved rounds,
  median) as depth grows (10, 100, 1000 tanh layers, width 64, batch 64) and as width grows
  (64, 256, 1024, depth 20); the cost per layer is flat when the ratio at 1000 layers stays
  within 1.5x of the ratio at 100;
- the Monitor's own memory: bytes it allocates (tracemalloc) and, for the update ratio, the
  size of its weight snapshot;
- gw.check on a 1000-layer width-64 MLP (seconds);
- on-disk bytes per recorded value;
- memory over many recorded steps: a tiny model stepped 100k times with a run directory;
  Python heap growth after the first 10k steps must stay flat (statistics stream to disk).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch
from torch import nn

import gradwatch as gw


def mlp(depth: int, width: int) -> nn.Sequential:
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def loop(model, opt, x, y, n, mon=None) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step(loss)
    return time.perf_counter() - t0


def overhead(depth: int, width: int, batch: int, rounds: int, steps: int, workdir: Path) -> dict:
    torch.manual_seed(0)
    base = mlp(depth, width)
    x, y = torch.randn(batch, width), torch.randn(batch, width)
    plain, watched = copy.deepcopy(base), copy.deepcopy(base)
    opt_p = torch.optim.SGD(plain.parameters(), lr=1e-3)
    opt_w = torch.optim.SGD(watched.parameters(), lr=1e-3)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    mon = gw.watch(watched, workdir / f"d{depth}-w{width}", optimizer=opt_w, diagnose=False)
    loop(plain, opt_p, x, y, 3)
    loop(watched, opt_w, x, y, 3, mon)
    monitor_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    ratios = []
    for _ in range(rounds):
        tp = loop(plain, opt_p, x, y, steps)
        tw = loop(watched, opt_w, x, y, steps, mon)
        ratios.append(tw / tp)
    mon.close()
    snapshot = sum(p.numel() * p.element_size() for p in watched.parameters())
    return {"depth": depth, "width": width, "batch": batch, "ratio": statistics.median(ratios),
            "plain_step_ms": 1e3 * tp / steps, "monitor_python_bytes": monitor_bytes,
            "snapshot_bytes": snapshot}


def check_time(depth: int = 1000, width: int = 64) -> float:
    torch.manual_seed(0)
    model = mlp(depth, width)
    x = torch.randn(64, width)
    t0 = time.perf_counter()
    cu = gw.check(model, x)
    dt = time.perf_counter() - t0
    print(f"gw.check on a {depth}-layer width-{width} MLP: {dt:.2f} s (verdict {cu.verdict})")
    return dt


def long_run(steps: int, workdir: Path) -> dict:
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(4, 2)
    run_dir = workdir / "long"
    tracemalloc.start()
    heap = []
    with gw.watch(model, run_dir, optimizer=opt, flush_every=500, diagnose=False):
        for i in range(steps):
            opt.zero_grad(set_to_none=True)
            model(x).sum().backward()
            opt.step()
            if (i + 1) % (steps // 10) == 0:
                heap.append(tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()
    size = sum(f.stat().st_size for f in (run_dir / "stats").glob("*.parquet"))
    n_values = len(gw.load(run_dir).stats)
    return {"steps": steps, "heap_bytes_at_each_tenth": heap,
            "heap_growth_after_first_tenth": heap[-1] - heap[0],
            "disk_bytes": size, "values": n_values, "bytes_per_value": size / n_values}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # deep tanh nets underflow: keep timings about the Monitor
    rounds, steps = (3, 3) if args.quick else (7, 5)
    workdir = Path(tempfile.mkdtemp(prefix="gw-scale-"))
    out: dict = {"torch": torch.__version__, "threads": args.threads}
    try:
        out["depth"] = []
        for depth in (10, 100, 1000):
            r = overhead(depth, 64, 64, rounds, steps, workdir)
            out["depth"].append(r)
            print(f"depth {depth:>5} width 64: plain {r['plain_step_ms']:.1f} ms/step, "
                  f"ratio {r['ratio']:.3f}x, Monitor heap {r['monitor_python_bytes'] / 1e6:.2f} MB,"
                  f" weight snapshot {r['snapshot_bytes'] / 1e6:.1f} MB", flush=True)
        r100, r1000 = out["depth"][1]["ratio"], out["depth"][2]["ratio"]
        print(f"cost per layer: overhead at 1000 layers / at 100 layers = "
              f"{(r1000 - 1) / max(r100 - 1, 1e-9):.2f} (ratio {r1000:.3f} vs {r100:.3f}; "
              f"flat if the ratios are within 1.5x: {r1000 / r100:.2f})")
        out["width"] = []
        for width in (64, 256, 1024):
            r = overhead(20, width, 64, rounds, steps, workdir)
            out["width"].append(r)
            print(f"depth 20 width {width:>5}: plain {r['plain_step_ms']:.1f} ms/step, "
                  f"ratio {r['ratio']:.3f}x", flush=True)
        out["check_1000_layers_s"] = check_time()
        out["long_run"] = long_run(20_000 if args.quick else 100_000, workdir)
        lr = out["long_run"]
        print(f"{lr['steps']} recorded steps: heap growth after the first tenth "
              f"{lr['heap_growth_after_first_tenth'] / 1e3:.1f} kB; "
              f"{lr['bytes_per_value']:.2f} bytes on disk per value")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
