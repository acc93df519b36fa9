"""One rank of the step-collective test: a tap reduces values across 2 gloo ranks in the step.

Rank r holds r + 1. The tap asks for a sum (emitted as the loss block) and for a max and a min
in one tensor (emitted as the clipping block); the Monitor must make one collective at each
recorded step (an all_gather, since the operations differ) and none at the others.
"""

import sys

import torch
import torch.distributed as dist
from torch import nn

import gradwatch as gw
from gradwatch.monitor.tap import TAPS, Tap


def main():
    rank, world, port, run_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    counts: list[int] = []
    for name in ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast"):
        orig = getattr(dist, name)

        def counted(*a, _orig=orig, **k):
            counts[-1] += 1
            return _orig(*a, **k)

        setattr(dist, name, counted)

    class RankValues(Tap):
        name, sources = "rank_values", ()

        def collect(self, rec):
            mine = torch.tensor([rank + 1.0])
            rec.emit("loss", (), rec.all_reduce(mine, "sum"))
            both = rec.all_reduce(torch.cat([mine, mine]), (("max", 1), ("min", 1)))
            rec.emit("clip", (), both)

    TAPS.append(RankValues)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(3, 4)
    with gw.watch(model, run_dir, optimizer=opt, every=2, flush_every=100) as mon:
        for _ in range(5):
            counts.append(0)
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        counts.append(0)  # the flush at close counts here
    print(f"collectives per step {counts[:5]}", flush=True)
    assert (mon.run_dir is None) == (rank != 0)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
