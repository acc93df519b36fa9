"""One rank of the sharded-layout harness: a small transformer-style block, watched, 3 steps.

argv: rank, world size, port, base directory, then ``layout:mode`` items separated by commas
(each writes under ``base/layout-mode/``: ``run``, and ``brute.json`` or ``counts.json``), run
one after the other in the same processes. Layouts: ``fsdp2``, ``fsdp2_keep``
(``reshard_after_forward=False``), ``fsdp2_mp`` (bf16 parameters, fp32 reduce), ``hsdp``
(2 x world/2 mesh), ``tp`` (Colwise/Rowwise), ``sp`` (sequence parallel), ``2d`` (tensor
parallel inside, FSDP2 outside), ``ddp``. Modes: ``check`` (train, and write beside the run
the brute-force parameter statistics of the full tensors, ``brute.json``), ``count`` (count
the collectives each step makes, watched and not, into ``counts.json``), ``fail`` (rank 1
raises at step 12; the docs' loop), ``statfail`` (the statistics of rank 1 raise at step
12), ``nan`` (one NaN in a shard, one Inf in each copy of a
replicated gradient).

Every rank of a data-parallel group trains on its share of the union batch of
:func:`batches`; the ranks of a tensor-parallel group see the same share (under sequence
parallelism, their chunk of its sequence).
"""

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import gradwatch as gw

B, T, H = 8, 4, 8
#: The low-precision format whose underflow/overflow fractions are checked too (opt-in
#: statistics; e4m3's smallest subnormal, 2^-9, flushes many of these gradients).
PRECISION = "e4m3"


class Block(nn.Module):
    """LayerNorm -> Linear up -> Tanh -> Linear down -> ReLU -> Linear head."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(H)
        self.up = nn.Linear(H, 4 * H)
        self.act = nn.Tanh()
        self.down = nn.Linear(4 * H, H)
        self.relu = nn.ReLU()
        self.head = nn.Linear(H, 4)

    def forward(self, x):
        return self.head(self.relu(self.down(self.act(self.up(self.norm(x))))))


def make_model() -> nn.Module:
    torch.manual_seed(0)
    m = Block()
    with torch.no_grad():
        m.up.weight.mul_(2.0)  # some tanh units saturate
        m.down.bias[:2].fill_(-5.0)  # some ReLU units die
    return m


def batches(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(B, T, H, generator=g), torch.randn(B, T, 4, generator=g)


def loss_fn(out, y):
    return (out - y).square().mean()


def parallelize(model, layout, rank, world):
    """The model in ``layout``; returns (model, data-parallel rank, dp size, seq chunk)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    seq = None
    if layout.startswith("fsdp2") or layout == "hsdp":
        shape = (2, world // 2) if layout == "hsdp" else (world,)
        names = ("replicate", "shard") if layout == "hsdp" else ("shard",)
        mesh = init_device_mesh("cpu", shape, mesh_dim_names=names)
        kw = {"mesh": mesh}
        if layout == "fsdp2_keep":
            kw["reshard_after_forward"] = False
        if layout == "fsdp2_mp":
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                   reduce_dtype=torch.float32)
        for sub in (model.norm, model.up, model.down, model.head):
            fully_shard(sub, **kw)
        fully_shard(model, **kw)
        return model, rank, world, seq
    if layout in ("tp", "sp"):
        mesh = init_device_mesh("cpu", (world,))
        if layout == "tp":
            plan = {"up": ColwiseParallel(), "down": RowwiseParallel()}
        else:
            plan = {
                "norm": SequenceParallel(),
                "up": ColwiseParallel(input_layouts=Shard(1)),
                "down": RowwiseParallel(output_layouts=Shard(1)),
                "head": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
            }
            seq = slice(rank * T // world, (rank + 1) * T // world)
        parallelize_module(model, mesh, plan)
        return model, 0, 1, seq
    if layout == "2d":
        mesh = init_device_mesh("cpu", (world // 2, 2), mesh_dim_names=("dp", "tp"))
        parallelize_module(model, mesh["tp"], {"up": ColwiseParallel(),
                                               "down": RowwiseParallel()})
        for sub in (model.norm, model.up, model.down, model.head):
            fully_shard(sub, mesh=mesh["dp"])
        fully_shard(model, mesh=mesh["dp"])
        return model, mesh.get_coordinate()[0], world // 2, seq
    if layout == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model), rank, world, seq
    raise SystemExit(f"unknown layout {layout}")


def full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def brute(model, before):
    """Per layer: grad norm, max |g|, weight norm, update norm, from the full tensors."""
    out = {}
    for name in ("norm", "up", "down", "head"):
        mod = getattr(model, name)
        ps = [mod.weight, mod.bias]
        gs = [full(p.grad).double() for p in ps]
        ws = [full(p.detach()).double() for p in ps]
        out[name] = {
            "grad_norm": sum(float(g.square().sum()) for g in gs) ** 0.5,
            "grad_max_abs": max(float(g.abs().max()) for g in gs),
            "weight_norm": sum(float(w.square().sum()) for w in ws) ** 0.5,
            "update": sum(float((b - w).square().sum()) for b, w in
                          zip(before[name], ws, strict=True)) ** 0.5,
        }
    return out


def main():
    rank, world, port, base = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    for item in sys.argv[5].split(","):
        layout, mode = item.split(":")
        run_dir = Path(base) / f"{layout}-{mode}" / "run"
        run(rank, world, layout, mode, str(run_dir))
        dist.barrier()
    dist.destroy_process_group()


def run(rank, world, layout, mode, run_dir):
    """One layout in one mode (see the module docstring)."""
    model, dp_rank, dp, seq = parallelize(make_model(), layout, rank, world)
    inner = model.module if layout == "ddp" else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step_once(step):
        x, y = batches(step)
        share = slice(dp_rank * B // dp, (dp_rank + 1) * B // dp)
        x, y = x[share], y[share]
        if seq is not None:
            x = x[:, seq]
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    if mode == "check":
        records = []
        with gw.watch(inner, run_dir, optimizer=opt, detail_every=1, flush_every=2,
                      precision=PRECISION) as mon:
            for step in range(3):
                before = {n: [full(p.detach()).double().clone()
                              for p in (getattr(inner, n).weight, getattr(inner, n).bias)]
                          for n in ("norm", "up", "down", "head")}
                # the gradients are read before the optimizer step: keep them
                grads = {}
                hook = opt.register_step_pre_hook(
                    lambda *a, b=before, out=grads: out.update(brute(inner, b)))
                loss = step_once(step)
                hook.remove()
                after = brute(inner, before)  # weights after the step
                for n in grads:
                    grads[n]["weight_norm"] = after[n]["weight_norm"]
                    grads[n]["update"] = after[n]["update"]
                mon.step(loss)
                records.append(grads)
        if rank == 0:
            Path(run_dir).with_name("brute.json").write_text(json.dumps(records))
    elif mode == "count":
        counts = {"plain": [], "watched": []}
        names = ("all_reduce", "all_gather", "all_gather_object", "gather_object", "broadcast",
                 "reduce_scatter_tensor", "all_gather_into_tensor", "all_to_all_single")
        calls = [0]

        def counting(fn):
            def wrapped(*a, **k):
                calls[0] += 1
                return fn(*a, **k)
            return wrapped

        for n in names:
            setattr(dist, n, counting(getattr(dist, n)))
        for step in range(2):
            calls[0] = 0
            step_once(step)
            counts["plain"].append(calls[0])
        with gw.watch(inner, run_dir, optimizer=opt, every=2, detail_every=1,
                      flush_every=1000, diagnose=False) as mon:
            for step in range(4):
                calls[0] = 0
                mon.step(step_once(2 + step))
                counts["watched"].append(calls[0])
        if rank == 0:
            Path(run_dir).with_name("counts.json").write_text(json.dumps(counts))
    elif mode == "nan":  # one NaN in rank 1's shard of up.weight; one in every copy of a
        # replicated gradient (tensor parallel: down.bias): each counted once
        with gw.watch(inner, run_dir, optimizer=opt, diagnose=False) as mon:
            x, y = batches(0)
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            with torch.no_grad():
                if rank == 1:
                    inner.up.weight.grad.to_local().view(-1)[0] = float("nan")
                bias = inner.down.bias.grad
                if layout == "tp":
                    bias.to_local()[0] = float("inf")
            opt.step()
            mon.step()
    elif mode == "partial":
        partial_and_shard(rank, run_dir)
    elif mode in ("fail", "statfail"):
        from gradwatch.monitor.taps import shard as shard_tap

        def broken(*args, step=12):  # the statistics of the shards raise on rank 1
            print(f"failing at {time.time()}", flush=True)
            raise UserError(f"rank {rank} failed at step {step}")

        data = torch.Generator().manual_seed(1)
        with gw.watch(inner, run_dir, optimizer=opt, flush_every=5) as mon:
            for step in range(20):
                if rank == 1 and step == 12:
                    if mode == "statfail":
                        shard_tap.local_squares = broken
                    else:
                        broken()
                x = torch.randn(B, T, H, generator=data)
                opt.zero_grad()
                loss = loss_fn(model(x), torch.zeros(B, T, 4))
                loss.backward()
                opt.step()
                mon.step(loss)  # after the step, as a training loop does: flushed with it


def partial_and_shard(rank, run_dir):
    """Gradients both ``Shard`` and ``Partial`` on 2-D meshes of the 2 ranks (2 x 1, 1 x 2).

    One parameter per mesh, sharded on dim 0 of the mesh and replicated on dim 1; its
    gradient is set to ``Shard(0)`` x ``Partial()`` local parts that differ per rank. Rank 0
    writes the recorded ``grad_norm``/``grad_max_abs`` beside the norms of the gradients'
    ``full_tensor()`` (the Partial parts summed), in ``partial.json``.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    meshes = [init_device_mesh("cpu", shape) for shape in ((2, 1), (1, 2))]
    model = nn.Module()
    model.a, model.b = nn.Linear(4, 6, bias=False), nn.Linear(4, 6, bias=False)
    for mod, mesh in zip((model.a, model.b), meshes, strict=True):
        full_w = torch.arange(24, dtype=torch.float32).reshape(6, 4) / 10
        mod.weight = nn.Parameter(distribute_tensor(full_w, mesh, [Shard(0), Replicate()]))
    with gw.watch(model, run_dir, detail_every=1, diagnose=False) as mon:
        expected = {}
        for name, mod, mesh in (("a", model.a, meshes[0]), ("b", model.b, meshes[1])):
            rows = mod.weight.to_local().shape[0]
            g = torch.linspace(-1, 2, rows * 4).reshape(rows, 4) * (rank + 1) + rank
            mod.weight.grad = DTensor.from_local(g, mesh, [Shard(0), Partial()])
            summed = mod.weight.grad.full_tensor().double()
            expected[name] = {"grad_norm": float(summed.norm()),
                              "grad_max_abs": float(summed.abs().max())}
        mon.step()
    if rank == 0:
        run = gw.load(run_dir)
        got = {stat: run.pivot(stat).iloc[0].to_dict() for stat in ("grad_norm", "grad_max_abs")}
        Path(run_dir).with_name("partial.json").write_text(
            json.dumps({"expected": expected, "got": got}))


class UserError(RuntimeError):
    """The user's own failure."""


if __name__ == "__main__":
    main()
