"""One rank of the DDP test: train 3 steps of a small MLP under DDP (gloo), watched."""

import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import gradwatch as gw


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3))


def batches(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)


def main():
    rank, world, port, run_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    model = DDP(make_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model.module, run_dir, optimizer=opt, detail_every=1, flush_every=2) as mon:
        for step in range(3):
            x, y = batches(step)
            share = slice(rank * 8 // world, (rank + 1) * 8 // world)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[share]), y[share])
            loss.backward()
            opt.step()
            mon.step(loss)
    assert (mon.run_dir is None) == (rank != 0)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
