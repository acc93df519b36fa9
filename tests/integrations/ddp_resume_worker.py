"""One rank of the DDP resume test: two sessions on one run directory, the second resumed.

argv: rank, world size, port, run_dir.
"""

import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import gradwatch as gw


def main():
    rank, world, port, run_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DDP(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(rank)
    for session in range(2):
        # flush_every=2 over 3 steps: the ranks must agree where the resumed run flushes
        with gw.watch(model.module, run_dir, optimizer=opt, flush_every=2,
                      resume=session == 1) as mon:
            assert mon.step_count == 3 * session, mon.step_count
            for _ in range(3):
                opt.zero_grad()
                loss = model(torch.randn(4, 6, generator=data)).pow(2).mean()
                loss.backward()
                opt.step()
                mon.step(loss)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
