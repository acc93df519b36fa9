"""Overhead of the Monitor beside the anchors: plain training vs watched training, in one process.

For each network, plain training and each configuration train their own copy of the model on
the same data; the loops are interleaved in rounds (plain, config 1, config 2, ...) so that
machine noise hits all of them alike, and the reported figure is the median over rounds of
(watched time / plain time). Also reports the bytes on disk per recorded value.

    python benchmarks/overhead.py                    # MLPs (a), (b), a conv net, a transformer
    python benchmarks/overhead.py --networks a,b --rounds 31 --steps 20 --out results/o.json
    python benchmarks/overhead.py --clock cpu --threads 1   # a busy shared machine
    python benchmarks/overhead.py --anchors lightning  # Lightning's grad_norm, no wandb
    python benchmarks/overhead.py --python-path     # gradwatch without its compiled kernels
    python benchmarks/overhead.py --configs floor,param_grads,default,everything  # these rows
    python benchmarks/overhead.py --device cuda      # on a GPU: CUDA events, host syncs per step
    python benchmarks/overhead.py --networks transformer --optimizer adamw \
        --without attn_logit_max,attn_entropy_min,logit_max,logsumexp_mean,update_rms,eps_frac
                                                     # what some statistics cost

Subnormal floats are flushed to zero (torch.set_flush_denormal): the deep tanh nets' tiny
gradients would otherwise put the CPU on its slow path and make every timing about that.

``--clock cpu`` times the process's CPU time instead of the wall clock: on a machine shared
with other jobs it counts only this process's work (use it with ``--threads 1``).

Configurations:
- param_grads: parameter-gradient statistics only (grad_norm, grad_rms, nonfinite, loss)
- default:     gw.watch defaults (gradient norms, non-finite counts and the loss every step;
               back-propagated norms, max |g|, weight norm, update ratio and activation
               statistics every 10th recorded step)
- everything:  every statistic at every step (detail_every=1, activations on)
- default_without / everything_without (with ``--without STATS``): the same without the named
               statistics; the difference is what those statistics cost (per detail step:
               ``everything`` against ``everything_without``)
- everything_fp16: the same with ``precision="fp16"``: the low-precision statistics (four
               formats' underflow/overflow of gradients and back-propagated signal, log2
               range) at every step, so the two rows give the cost of a detail step before
               and after them
- floor:       no gradwatch: one fused ``torch._foreach_norm`` over the gradients after every
               backward (what ``clip_grad_norm_`` does): the standard way to read every
               gradient once, and what the parameter-gradient statistics cost at least
- lightning:   Lightning's ``grad_norm(model, 2)`` after every backward (when installed)
- wandb / wandb10: ``wandb.watch(model, log="all")`` offline, every step / every 10th step
               (when installed; WANDB_MODE=offline, nothing leaves the machine)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import gradwatch as gw

CONFIGS = {
    "param_grads": dict(stats=["grad_norm", "grad_rms", "nonfinite", "loss"], activations=False),
    "default": dict(),
    "everything": dict(detail_every=1),
    "everything_fp16": dict(detail_every=1, precision="fp16"),
}
LABELS = {
    "param_grads": "gradwatch, parameter-gradient statistics only",
    "default": "**gradwatch default**",
    "everything": "gradwatch, everything every step",
    "everything_fp16": "gradwatch, everything every step + low-precision statistics",
    "floor": "floor: one `torch._foreach_norm` over the gradients, no gradwatch",
    "lightning": "Lightning `grad_norm` every step (norms only)",
    "wandb": "wandb.watch every step",
    "wandb10": "wandb.watch every 10 steps",
}


def mlp(depth: int, width: int) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def convnet() -> nn.Module:
    """A small CNN with strides and pooling: (B, 3, 32, 32) -> (B, 10)."""
    def block(c_in, c_out, stride):
        return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                nn.ReLU()]

    return nn.Sequential(
        *block(3, 32, 1), *block(32, 32, 1), nn.MaxPool2d(2),
        *block(32, 64, 1), *block(64, 64, 2), *block(64, 128, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )


class Transformer(nn.Module):
    """A small encoder: embedding, 4 pre-norm layers (d=128, 4 heads), head; (B, T) tokens."""

    def __init__(self, vocab: int = 512, d: int = 128, layers: int = 4):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):  # (B, T) -> (B, T, vocab)
        return self.head(self.enc(self.emb(tokens)))


def make(name: str, device: str):
    """(description, model, inputs, loss function) of a benchmark network."""
    g = torch.Generator().manual_seed(0)
    if name in ("a", "b"):
        depth, width, batch = (20, 256, 128) if name == "a" else (200, 64, 64)
        x = torch.randn(batch, width, generator=g)
        y = torch.randn(batch, width, generator=g)
        desc = f"({name}) {depth} tanh layers x {width}, batch {batch}"
        return desc, mlp(depth, width), x.to(device), lambda out: ((out - y.to(device)) ** 2).mean()
    if name == "conv":
        x = torch.randn(32, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (32,), generator=g)
        return ("(conv) 5 conv-BN-ReLU, strides and pooling, 3x32x32, batch 32", convnet(),
                x.to(device), lambda out: nn.functional.cross_entropy(out, y.to(device)))
    if name == "transformer":
        x = torch.randint(0, 512, (16, 64), generator=g)
        y = torch.randint(0, 512, (16, 64), generator=g)
        return ("(transformer) 4 pre-norm encoder layers d=128, seq 64, batch 16",
                Transformer(), x.to(device),
                lambda out: nn.functional.cross_entropy(out.flatten(0, 1), y.to(device).flatten()))
    raise SystemExit(f"unknown network {name!r}")


def without(names: list[str]) -> list[str]:
    """Every statistic a default ``gw.watch`` records, less ``names``."""
    from gradwatch.stats import ALL_STATS, STATISTICS

    unknown = [n for n in names if n not in ALL_STATS]
    if unknown:
        raise SystemExit(f"--without: unknown statistics {unknown}")
    return [s for s in ALL_STATS
            if s not in names and getattr(STATISTICS[s], "default", True)]


class Runner:
    """One configuration: its own copy of the model, optimizer and instrumentation."""

    def __init__(self, key, base, x, loss_fn, workdir, optimizer="sgd"):
        self.key, self.x, self.loss_fn = key, x, loss_fn
        self.model = copy.deepcopy(base)
        if optimizer == "adamw":
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        else:
            self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3)
        self.mon = None
        self.after_backward = None
        self.after_step = None
        if key in CONFIGS:
            self.mon = gw.watch(self.model, workdir, optimizer=self.opt, **CONFIGS[key])
        elif key == "floor":
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.after_backward = lambda: torch._foreach_norm(
                [p.grad for p in params if p.grad is not None]
            )
        elif key == "lightning":
            from lightning.pytorch.utilities import grad_norm

            self.after_backward = lambda: grad_norm(self.model, norm_type=2)
        elif key.startswith("wandb"):
            import wandb

            if wandb.run is None:  # one offline run; wandb.watch follows several models in it
                (workdir.parent / "wandb").mkdir(parents=True, exist_ok=True)
                wandb.init(project="gradwatch-bench", dir=str(workdir.parent / "wandb"),
                           mode="offline")
            wandb.watch(self.model, log="all", log_freq=10 if key == "wandb10" else 1)
            self.after_step = lambda: wandb.log({"loss": 0.0})

    def steps(self, n: int) -> None:
        model, opt = self.model, self.opt
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            loss = self.loss_fn(model(self.x))
            loss.backward()
            if self.after_backward is not None:
                self.after_backward()
            opt.step()
            if self.mon is not None:
                self.mon.step(loss)
            if self.after_step is not None:
                self.after_step()


def timed(runner: Runner, n: int, clock: str) -> float:
    """Seconds for n training steps (CUDA events and a final sync on a GPU)."""
    if runner.x.is_cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        runner.steps(n)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    tick = time.process_time if clock == "cpu" else time.perf_counter
    t0 = tick()
    runner.steps(n)
    return tick() - t0


def count_host_syncs(runner: Runner, n: int = 20) -> int:
    """Host synchronisations during n watched steps between flushes (CUDA only)."""
    import warnings

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runner.steps(n)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def available_anchors() -> list[str]:
    out = []
    try:
        import lightning.pytorch.utilities  # noqa: F401

        out.append("lightning")
    except ImportError:
        pass
    try:
        import wandb  # noqa: F401

        out += ["wandb", "wandb10"]
    except ImportError:
        pass
    return out


def bench_network(name, rounds, steps, workdir, device, clock, anchors,
                  optimizer="sgd", floor=True) -> dict:
    torch.manual_seed(0)
    desc, base, x, loss_fn = make(name, device)
    base = base.to(device)
    keys = ["plain", *(["floor"] if floor else []), *CONFIGS, *anchors]
    runners = {k: Runner(k, base, x, loss_fn, workdir / name / k, optimizer) for k in keys}
    for r in runners.values():
        r.steps(3)  # warm-up: plans, buffers, allocator
    times: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(rounds):
        for k, r in runners.items():
            times[k].append(timed(r, steps, clock))
    plain = statistics.median(times["plain"]) / steps
    result = {"network": name, "description": desc, "plain_step_ms": 1e3 * plain}
    for k in keys[1:]:
        ratios = [w / p for w, p in zip(times[k], times["plain"], strict=True)]
        result[f"ratio_{k}"] = statistics.median(ratios)
    if device.startswith("cuda"):
        r = runners["default"]
        r.mon.flush_every, r.mon.flush_secs = 10**9, float("inf")  # no flush inside the count
        result["host_syncs_per_step_default"] = count_host_syncs(r) / 20
    for k in CONFIGS:
        mon = runners[k].mon
        mon.close()
        run = gw.load(mon.run_dir)
        size = sum(f.stat().st_size for f in (mon.run_dir / "stats").glob("*.parquet"))
        result[f"bytes_per_value_{k}"] = size / max(len(run.stats), 1)
    if any(k.startswith("wandb") for k in anchors):
        import wandb

        wandb.unwatch()
    return result


def table(results: list[dict], keys: list[str]) -> str:
    head = "| configuration | " + " | ".join(r["network"] for r in results) + " |"
    lines = [head, "|---|" + "---|" * len(results)]
    lines.append("| plain step | " + " | ".join(f"{r['plain_step_ms']:.1f} ms" for r in results)
                 + " |")
    for k in keys:
        cells = [f"{r[f'ratio_{k}']:.2f}x" if f"ratio_{k}" in r else "-" for r in results]
        lines.append(f"| {LABELS[k]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def native_ready(python_path: bool) -> bool:
    """Build (or load) gradwatch's compiled kernels before timing, or switch them off."""
    try:
        from gradwatch.stats import native
    except ImportError:  # an earlier gradwatch, without compiled kernels
        return False

    if python_path:
        os.environ[native.ENV] = "0"
        print("gradwatch: Python path (compiled kernels off)", flush=True)
        return False
    ok = native.build() is not None
    print(f"gradwatch: compiled kernels {'on' if ok else 'unavailable: Python path'}",
          flush=True)
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", default="a,b,conv,transformer")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--no-anchors", action="store_true", help="skip Lightning and wandb")
    ap.add_argument("--anchors", default=None,
                    help="comma-separated anchors to run (lightning, wandb, wandb10); "
                         "default: every one installed")
    ap.add_argument("--configs", default=None,
                    help="comma-separated gradwatch configurations (and floor) to time; "
                         f"default: floor and every one of {', '.join(CONFIGS)}")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                    help="the optimizer every loop trains with (adamw: Adam's statistics too)")
    ap.add_argument("--without", default="",
                    help="comma-separated statistics: adds default_without and "
                         "everything_without, the default and everything less them")
    ap.add_argument("--python-path", action="store_true",
                    help="keep gradwatch on its Python path (GRADWATCH_NATIVE=0): no compiled "
                         "kernels")
    args = ap.parse_args()
    compiled = native_ready(args.python_path)
    floor = True
    if args.configs is not None:
        wanted = [c for c in args.configs.split(",") if c]
        unknown = [c for c in wanted if c not in (*CONFIGS, "floor")]
        if unknown:
            raise SystemExit(f"--configs: unknown {unknown}; known: floor, {', '.join(CONFIGS)}")
        floor = "floor" in wanted
        for c in list(CONFIGS):
            if c not in wanted:
                del CONFIGS[c]
    if args.without:
        keep = without([n.strip() for n in args.without.split(",") if n.strip()])
        CONFIGS["default_without"] = dict(stats=keep)
        CONFIGS["everything_without"] = dict(detail_every=1, stats=keep)
        LABELS["default_without"] = f"gradwatch default, without {args.without}"
        LABELS["everything_without"] = f"gradwatch everything, without {args.without}"
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # deep tanh nets underflow; keep the timings about the Monitor
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    anchors = [] if args.no_anchors else available_anchors()
    if args.anchors is not None and not args.no_anchors:
        wanted = [a for a in args.anchors.split(",") if a]
        unknown = [a for a in wanted if a not in ("lightning", "wandb", "wandb10")]
        if unknown:
            raise SystemExit(f"unknown anchors {unknown}; known: lightning, wandb, wandb10")
        anchors = [a for a in anchors if a in wanted]
    workdir = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    results = []
    try:
        for name in args.networks.split(","):
            r = bench_network(name, args.rounds, args.steps, workdir, args.device, args.clock,
                              anchors, args.optimizer, floor)
            results.append(r)
            ratios = ", ".join(f"{k} {v:.3f}x" for k, v in r.items() if k.startswith("ratio_"))
            print(f"{r['description']}: plain step {r['plain_step_ms']:.2f} ms | {ratios}",
                  flush=True)
    finally:
        if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
            sys.modules["wandb"].finish()
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(table(results, [*(["floor"] if floor else []), *CONFIGS, *anchors]))
    if args.without:
        for r in results:  # a detail step with and without them: everything records all
            ms = (r["ratio_everything"] - r["ratio_everything_without"]) * r["plain_step_ms"]
            r["detail_step_cost_ms_of_without"] = ms
            print(f"{r['network']}: the statistics left out cost {ms:.2f} ms per detail step "
                  f"({100 * ms / r['plain_step_ms']:.1f}% of a plain step); default "
                  f"{r['ratio_default']:.3f}x with them, {r['ratio_default_without']:.3f}x "
                  "without")
    meta = {"torch": torch.__version__, "threads": args.threads, "rounds": args.rounds,
            "optimizer": args.optimizer, "without": args.without,
            "steps_per_round": args.steps, "device": args.device, "clock": args.clock,
            "load": os.getloadavg(), "compiled_kernels": compiled,
            "configs": list(CONFIGS)}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
