"""Overhead of the Monitor: plain training vs watched training, side by side in one process.

For each network, the plain loop and each Monitor configuration train their own copy of the
model on the same data; the loops are interleaved in rounds (plain, config 1, config 2, ...)
so that machine noise hits all of them alike, and the reported figure is the median over rounds
of (watched time / plain time). Also reports the bytes on disk per recorded value.

    python benchmarks/overhead.py                 # both networks, all configurations
    python benchmarks/overhead.py --rounds 30 --steps 20 --out benchmarks/results/overhead.json
    python benchmarks/overhead.py --device cuda     # on a GPU: CUDA events, host syncs per step

Subnormal floats are flushed to zero (torch.set_flush_denormal): the deep tanh nets' tiny
gradients would otherwise put the CPU on its slow path and make every timing about that.

Configurations:
- param_grads: parameter-gradient statistics only (grad_norm, grad_rms, nonfinite, loss)
- grads:      gradient statistics (the above + backprop_norm; grad_max_abs)
- everything: every statistic at every step (detail_every=1, activations on)
- default:    gw.watch defaults (gradient and back-propagated norms every step; weight norm,
              update ratio and activation statistics every 10th recorded step)
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import gradwatch as gw

NETWORKS = {
    "a": dict(depth=20, width=256, batch=128),
    "b": dict(depth=200, width=64, batch=64),
}
CONFIGS = {
    "param_grads": dict(stats=["grad_norm", "grad_rms", "nonfinite", "loss"], activations=False),
    "grads": dict(
        stats=["grad_norm", "grad_rms", "grad_max_abs", "nonfinite", "backprop_norm", "loss"],
        activations=False,
    ),
    "everything": dict(detail_every=1),
    "default": dict(),
}


def make_model(depth: int, width: int) -> nn.Module:
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def time_steps(model, opt, x, y, n: int, mon=None) -> float:
    """Seconds for n training steps (CUDA events and a final sync on a GPU)."""
    cuda = x.is_cuda
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
    t0 = time.perf_counter()
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step(loss)
    if cuda:
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    return time.perf_counter() - t0


def count_host_syncs(model, opt, x, y, mon, n: int = 20) -> int:
    """Host synchronisations during n watched steps between flushes (CUDA only)."""
    import warnings

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            time_steps(model, opt, x, y, n, mon)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def bench_network(name: str, rounds: int, steps: int, workdir: Path, device: str = "cpu") -> dict:
    spec = NETWORKS[name]
    torch.manual_seed(0)
    base = make_model(spec["depth"], spec["width"]).to(device)
    x = torch.randn(spec["batch"], spec["width"], device=device)
    y = torch.randn(spec["batch"], spec["width"], device=device)
    runs = {"plain": (copy.deepcopy(base), None)}
    for cfg, opts in CONFIGS.items():
        runs[cfg] = (copy.deepcopy(base), opts)
    state = {}
    for key, (model, opts) in runs.items():
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        mon = None
        if opts is not None:
            mon = gw.watch(model, workdir / f"{name}-{key}", optimizer=opt, **opts)
        state[key] = (model, opt, mon)
        time_steps(model, opt, x, y, 5, mon)  # warm-up
    times = {k: [] for k in state}
    for _ in range(rounds):
        for key, (model, opt, mon) in state.items():
            times[key].append(time_steps(model, opt, x, y, steps, mon))
    plain_ms = 1e3 * statistics.median(times["plain"]) / steps
    result = {"network": name, **spec, "plain_step_ms": plain_ms}
    for key in CONFIGS:
        ratios = [w / p for w, p in zip(times[key], times["plain"], strict=True)]
        result[f"ratio_{key}"] = statistics.median(ratios)
    if device.startswith("cuda"):
        model, opt, mon = state["default"]
        mon.flush_every, mon.flush_secs = 10**9, float("inf")  # no flush inside the count
        result["host_syncs_per_step_default"] = count_host_syncs(model, opt, x, y, mon) / 20
    for key in CONFIGS:
        mon = state[key][2]
        mon.close()
        run = gw.load(mon.run_dir)
        size = sum(f.stat().st_size for f in (mon.run_dir / "stats").glob("*.parquet"))
        result[f"bytes_per_value_{key}"] = size / max(len(run.stats), 1)
        result[f"values_{key}"] = len(run.stats)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", default="a,b")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # deep tanh nets underflow; keep the timings about the Monitor
    workdir = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    results = []
    try:
        for name in args.networks.split(","):
            r = bench_network(name, args.rounds, args.steps, workdir, args.device)
            results.append(r)
            print(
                f"({name}) depth {r['depth']} width {r['width']} batch {r['batch']}: "
                f"plain step {r['plain_step_ms']:.2f} ms | ratio param-grads "
                f"{r['ratio_param_grads']:.3f}x, grads+backprop {r['ratio_grads']:.3f}x, "
                f"everything-every-step {r['ratio_everything']:.3f}x, "
                f"default {r['ratio_default']:.3f}x | disk bytes/value: "
                f"{r['bytes_per_value_everything']:.2f} (everything), "
                f"{r['bytes_per_value_default']:.2f} (default)",
                flush=True,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "rounds": args.rounds,
            "steps_per_round": args.steps, "device": args.device}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
