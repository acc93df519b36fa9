"""Watched vs plain training step under FSDP2, side by side, on 2 ranks (gloo on CPU).

    python benchmarks/fsdp.py [--quick] [--ranks 2] [--out benchmarks/results/fsdp.json]

Each rank builds two identical FSDP2 models (``fully_shard`` per layer, then the root): one
plain, one watched by ``gw.watch``. Rounds alternate between them (plain, watched, plain, ...)
so that the machine's load falls on both alike; the figure is the median over rounds of
(watched time / plain time) for the same number of steps, on rank 0. Configurations: the
default (every step recorded, detail statistics every 10th), and everything at every step
(``detail_every=1``). The watched model's extra collective is one all-reduce of a few floats
per parameter per recorded step (an all-gather of the same buffer at steps that take
max |g|); FSDP2's own all-gathers and reduce-scatters dominate either way.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import gradwatch as gw


def mlp(depth: int, width: int) -> nn.Sequential:
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def sharded(depth: int, width: int) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = mlp(depth, width)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def steps(model, opt, x, y, n, mon=None) -> float:
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step(loss)
    dist.barrier()
    return time.perf_counter() - t0


def worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.set_flush_denormal(True)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(args.batch, args.width, generator=g), torch.randn(args.batch, args.width,
                                                                          generator=g)
    results = {}
    for label, options in (("default", {}), ("everything every step", {"detail_every": 1})):
        plain, watched = sharded(args.depth, args.width), sharded(args.depth, args.width)
        opt_p = torch.optim.SGD(plain.parameters(), lr=1e-3)
        opt_w = torch.optim.SGD(watched.parameters(), lr=1e-3)
        with tempfile.TemporaryDirectory() as tmp:
            mon = gw.watch(watched, Path(tmp) / "run", optimizer=opt_w, diagnose=False,
                           **options)
            steps(plain, opt_p, x, y, 3)  # warm-up: allocations, plans
            steps(watched, opt_w, x, y, 3, mon)
            ratios, t_plain, t_watched = [], [], []
            for _ in range(args.rounds):
                tp = steps(plain, opt_p, x, y, args.steps)
                tw = steps(watched, opt_w, x, y, args.steps, mon)
                ratios.append(tw / tp)
                t_plain.append(tp / args.steps)
                t_watched.append(tw / args.steps)
            mon.close()
        results[label] = {
            "plain_ms_per_step": 1e3 * statistics.median(t_plain),
            "watched_ms_per_step": 1e3 * statistics.median(t_watched),
            "ratio_median": statistics.median(ratios),
        }
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few short rounds (a smoke run)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.rounds, args.steps = (3, 5) if args.quick else (15, 20)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "fsdp.json")
        mp.spawn(worker, args=(args.ranks, port, args, out), nprocs=args.ranks, join=True)
        results = json.loads(Path(out).read_text())
    print(f"FSDP2, {args.ranks} ranks (gloo, CPU), {args.depth} x Linear({args.width}) + tanh, "
          f"batch {args.batch} per rank, {args.rounds} rounds of {args.steps} steps")
    print(f"{'configuration':<24}{'plain ms/step':>15}{'watched ms/step':>17}{'ratio':>8}")
    for label, r in results.items():
        print(f"{label:<24}{r['plain_ms_per_step']:>15.2f}{r['watched_ms_per_step']:>17.2f}"
              f"{r['ratio_median']:>8.3f}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"config": vars(args) | {"out": str(args.out)},
                                        "results": results}, indent=2))


if __name__ == "__main__":
    main()
